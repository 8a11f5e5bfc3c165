"""The rich console every command prints through."""

from __future__ import annotations


def make_console():
    """A rich Console; 160 columns when output is piped or captured, where rich's 80-column
    default would cut item ids, user types and metric names."""
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=160)
    return console

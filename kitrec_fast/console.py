"""The rich console every command prints through."""

from __future__ import annotations


def make_console():
    """A rich Console; 160 columns when output is piped or captured, where rich's 80-column
    default would cut item ids, user types and metric names."""
    from rich.console import Console

    from kitrec_fast.parallel import is_main_process

    # Under torchrun / accelerate launch only rank 0 talks; the other ranks would repeat every line.
    quiet = not is_main_process()
    console = Console(highlight=False, quiet=quiet)
    if not console.is_terminal:
        console = Console(highlight=False, width=160, quiet=quiet)
    return console

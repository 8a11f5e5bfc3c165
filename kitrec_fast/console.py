"""The rich console every command prints through."""

from __future__ import annotations


def make_console():
    """A rich Console; 160 columns for tables when output is piped or captured, where rich's
    80-column default would cut item ids, user types and metric names."""
    from rich.console import Console

    from kitrec_fast.parallel import is_main_process

    # Under torchrun / accelerate launch only rank 0 talks; the other ranks would repeat every line.
    quiet = not is_main_process()
    console = Console(highlight=False, quiet=quiet)
    if not console.is_terminal:
        # soft_wrap: a message is never broken mid-sentence into a log or a pipe (a reader, or a
        # grep, sees `--on-bad-row skip` on the line that suggests it); tables still fit 160.
        console = Console(highlight=False, width=160, quiet=quiet, soft_wrap=True)
    return console

"""The one error type for problems a user can fix, and the one place that prints them.

Every stage raises a subclass of :class:`UserError` (a bad row, a bad option, a config that does
not match the run directory); ``kitrec-fast`` and ``python -m kitrec_fast.recipes.*`` catch it in
:func:`run_cli` and print the message without a traceback (``--debug`` shows it). Anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Callable


class UserError(Exception):
    """A problem the user can fix; printed without a traceback, exit status ``exit_code``."""

    exit_code = 2


def run_cli(main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Run ``main(argv)``; a UserError prints ``error: ...`` and exits 2 unless --debug is given.

    Ctrl-C that reaches here prints ``interrupted`` and exits 130 (the shell's convention)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("KITREC_FAST_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    try:
        return int(main(argv) or 0)
    except UserError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        # Ctrl-C outside a training loop (which handles it itself): nothing half-written to report.
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130

"""The one error type for problems a user can fix, and the one place that prints them.

Every stage raises a subclass of :class:`UserError` (a bad row, a bad option, a config that does
not match the run directory); ``kitrec-fast`` and ``python -m kitrec_fast.recipes.*`` catch it in
:func:`run_cli` and print the message without a traceback (``--debug`` shows it). Anything else is
a bug and keeps its traceback.

Exit statuses: 0 done; 1 a bug (traceback); 2 a user error; 74 the disk is full (found before a
run or an export, or a save failed with ENOSPC; the previous checkpoint is intact); 130 / 143
interrupted by Ctrl-C / SIGTERM (a checkpoint was written; rerun to resume). The grid retries none
of these: only a stage whose process or node was killed is rerun.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Iterable


class UserError(Exception):
    """A problem the user can fix; printed without a traceback, exit status ``exit_code``."""

    exit_code = 2


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name to a mistyped one, else ``""``.

    difflib's ratio with its usual 0.6 cut-off: close enough for a typo or a dropped suffix, not
    so loose that an unrelated name is offered."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def run_cli(main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Run ``main(argv)``; a UserError prints ``error: ...`` and exits 2 unless --debug is given.

    Ctrl-C that reaches here prints ``interrupted`` and exits 130 (the shell's convention). Known
    harmless upstream log lines (see ``kitrec_fast.quiet``) are hidden unless --verbose is given."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("KITREC_FAST_DEBUG") == "1"
    verbose = "--verbose" in argv or os.environ.get("KITREC_FAST_VERBOSE") == "1"
    argv = [a for a in argv if a not in ("--debug", "--verbose")]
    if not verbose:
        from kitrec_fast.quiet import hide_known_noise

        hide_known_noise()
    try:
        return int(main(argv) or 0)
    except UserError as exc:
        if debug:
            raise
        _say(f"error: {exc}")
        return exc.exit_code
    except Exception as exc:
        # A load by Hub id that no loader wrapped (kitrec_fast.hub): still one line, not a traceback.
        line = None if debug else _hub_line(exc)
        if line is None:
            raise
        _say(f"error: {line}")
        return UserError.exit_code
    except KeyboardInterrupt:
        # Ctrl-C outside a training loop (which handles it itself): nothing half-written to report.
        if debug:
            raise
        _say("interrupted")
        return 130


def _hub_line(exc: BaseException) -> str | None:
    from kitrec_fast.hub import hub_cause, unreached_line

    cause = hub_cause(exc)
    return None if cause is None else unreached_line(cause)


def _say(line: str) -> None:
    """stderr may be a pipe whose reader is gone (`| tee`, ended by the same Ctrl-C): the exit
    status still tells what happened."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


class DiskFullError(UserError):
    """The disk cannot hold what a run or an export writes (found before, or when a save failed).

    Its own exit status, so that a scheduler (the grid) does not retry: the rerun would fill the
    same disk. The previous checkpoint is intact; after freeing space the same command resumes."""

    exit_code = 74  # EX_IOERR (sysexits.h)

"""Fault injection for the reliability tests: one environment variable, read here and nowhere else.

``KITREC_FAST_FAULT`` holds comma-separated ``ACTION:POINT=N`` entries:

* ``kill:step=N``       SIGKILL right after optimizer step N (global step) ends, before it is logged or saved
* ``kill:eval_batch=N`` SIGKILL after the N-th evaluation batch this process computed
* ``kill:save=N``       SIGKILL in the N-th checkpoint save of this process: all files written to the
                        staging folder, none synced or renamed into place
* ``kill:save_file=N``  SIGKILL at the N-th checkpoint file this process syncs (a save cut short)
* ``enospc:save_file=N`` the sync of that file fails with ENOSPC (a disk that filled up mid-save)
* ``kill:results=1``    SIGKILL after training, once the final adapter is in place and before the
                        plots, card and summary are written
* ``stop:POINT=N``      SIGSTOP instead: the process freezes there, for a test to kill its node
* ``once=PATH``         fire only in the first process that creates PATH (several jobs share the variable)
* ``disk_free=BYTES``   the free space the disk checks see (a small disk without a small disk)

SIGKILL is what a preempted VM, the OOM killer or a dead node does: no handler, no flush, no
cleanup runs, so what survives is exactly what was on the file system at that instant.
"""

from __future__ import annotations

import errno
import functools
import os
import signal

ENV = "KITREC_FAST_FAULT"
_ACTIONS = ("kill", "stop", "enospc")
_POINTS = ("step", "eval_batch", "save", "save_file", "results")


@functools.lru_cache(maxsize=1)
def _spec() -> tuple[dict, int | None, str | None]:
    """``({point: (action, n)}, disk_free, once)`` from the environment (parsed once per process)."""
    faults, free, once = {}, None, None
    for entry in filter(None, (e.strip() for e in os.environ.get(ENV, "").split(","))):
        if entry.startswith("disk_free="):
            free = int(entry.split("=", 1)[1])
            continue
        if entry.startswith("once="):
            once = entry.split("=", 1)[1]
            continue
        action, _, rest = entry.partition(":")
        point, _, n = rest.partition("=")
        if action not in _ACTIONS or point not in _POINTS or not n.isdigit():
            raise ValueError(f"{ENV}: cannot read {entry!r} (e.g. kill:step=3, kill:save_file=2, enospc:save_file=1)")
        faults[point] = (action, int(n))
    return faults, free, once


_counts: dict[str, int] = {}


def armed() -> bool:
    return bool(_spec()[0])


def disk_free_override() -> int | None:
    return _spec()[1]


def reached(point: str, n: int | None = None) -> None:
    """Mark one event at ``point`` (the n-th, or the next one of this process) and fire its fault."""
    fault = _spec()[0].get(point)
    if fault is None:
        return
    if n is None:
        n = _counts[point] = _counts.get(point, 0) + 1
    action, at = fault
    if n != at:
        return
    once = _spec()[2]
    if once is not None:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return  # another process fired it already
    if action in ("kill", "stop"):
        os.kill(os.getpid(), signal.SIGKILL if action == "kill" else signal.SIGSTOP)
        return
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + f" (injected by {ENV} at {point} {n})")


def callback():
    """The Trainer callback that marks steps and evaluation batches (None when nothing is armed)."""
    if not armed():
        return None
    from transformers import TrainerCallback

    class FaultPoints(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            reached("step", state.global_step)

        def on_prediction_step(self, args, state, control, **kw):
            reached("eval_batch")

    return FaultPoints()

"""The grid state file (``DIR/grid_state.json``): one writer (the grid command), any number of readers.

Written atomically, so ``kitrec-fast grid --status`` in a second terminal (or a rerun after a
crash) always reads a whole file. A job's ``state`` is one of ``STATES``; ``stages`` records the
stages that finished, so a rerun never redoes them. ``starting`` is there while the grid command
checks its jobs and starts or joins Ray, before the first job runs (what it is doing, since when,
and which process on which host does it).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from kitrec_fast.fsio import atomic_write_json
from kitrec_fast.grid.spec import GridError, GridSpec, Job

STATE_FILE = "grid_state.json"
# trained: training is done and the job's evaluation waits for the rest of its group to train
STATES = ("pending", "queued", "train", "trained", "generate", "score", "done", "failed")


def state_path(output: Path) -> Path:
    return Path(output) / STATE_FILE


def read_state(output: Path) -> dict | None:
    path = state_path(output)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise GridError(f"{path}: not a grid state file ({exc})") from None


def new_job_record(job: Job) -> dict:
    return {"recipe": job.recipe, "set": job.set_name, "backend": job.backend, "state": "pending",
            "stages_done": [], "attempts": {}, "run_dir": str(job.run_dir), "eval_dir": str(job.eval_dir),
            "step": None, "total": None, "loss": None, "eta_s": None, "node": None, "pids": {},
            "stage_seconds": {}, "error": None, "log": None}


def merge_state(spec: GridSpec, old: dict | None, command: str) -> dict:
    """The state for this invocation: the old one's jobs kept, new jobs added.

    A different grid setting (smoke, overrides, eval limits) in the same output folder would mix
    incomparable runs in one report, so it is refused."""
    if old is not None and old.get("settings") != spec.settings():
        diff = {k: (old.get("settings", {}).get(k), v) for k, v in spec.settings().items()
                if old.get("settings", {}).get(k) != v}
        shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
        raise GridError(f"{spec.output} holds a grid with other settings ({shown}); rerun with the same "
                        "settings to continue it, or use another --output")
    state = old or {"version": 1, "settings": spec.settings(), "jobs": {}, "created": time.time()}
    state["command"] = command
    state["output"] = str(spec.output)
    for job in spec.jobs():
        record = state["jobs"].setdefault(job.id, new_job_record(job))
        if record["state"] != "done":  # a rerun continues unfinished and failed jobs where they stopped
            record.update(state="pending", error=None, eta_s=None, pids={})
            record["attempts"] = {}
    return state


def write_state(output: Path, state: dict) -> None:
    state["updated"] = time.time()
    atomic_write_json(state_path(output), state)


def mark_starting(state: dict, doing: str) -> None:
    """Record the start step the grid command is on (written with the next ``write_state``)."""
    since = (state.get("starting") or {}).get("since") or time.time()
    state["starting"] = {"doing": doing, "since": since, "pid": os.getpid(), "host": socket.gethostname()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def start_phase(state: dict) -> str | None:
    """A line on a grid that has not started its first job yet, or None once it has."""
    start = state.get("starting")
    if not start:
        return None
    since = time.strftime("%H:%M:%S", time.localtime(start["since"]))
    who = f"pid {start['pid']} on {start['host']}"
    if start["host"] == socket.gethostname() and not _alive(int(start["pid"])):
        return (f"[yellow]a grid started at {since} ({who}) stopped before its first job[/], while "
                f"{start['doing']}; rerun the grid command to start it again")
    return f"[cyan]grid starting[/] (since {since}, {who}): {start['doing']}"

"""The grid state file (``DIR/grid_state.json``): one writer (the grid command), any number of readers.

Written atomically, so ``kitrec-fast grid --status`` in a second terminal (or a rerun after a
crash) always reads a whole file. A job's ``state`` is one of ``STATES``; ``stages`` records the
stages that finished, so a rerun never redoes them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from kitrec_fast.fsio import atomic_write_json
from kitrec_fast.grid.spec import GridError, GridSpec, Job

STATE_FILE = "grid_state.json"
STATES = ("pending", "queued", "train", "generate", "score", "done", "failed")


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

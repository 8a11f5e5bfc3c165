"""Experiment trackers (``train.report_to``): installed or not, where their files go, and the
project's own metrics inside the Trainer's log events.

The trackers themselves are transformers' ``report_to`` integrations; this module only decides
their defaults so that a run keeps its logs in its own directory, and records where they went.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Callable

from transformers import TrainerCallback

from kitrec_fast.errors import UserError

TRACK_EXTRA = "pip install 'kitrec_fast[track]'"
# tracker -> (module transformers looks for, how to install it). trackio is not in the extra: it
# brings a Gradio web stack with it.
_INSTALL = {
    "tensorboard": ("tensorboard", TRACK_EXTRA),
    "wandb": ("wandb", TRACK_EXTRA),
    "mlflow": ("mlflow", TRACK_EXTRA),
    "trackio": ("trackio", "pip install trackio"),
}
PROJECT = "kitrec_fast"


class TrackerNotInstalled(UserError):
    """A tracker named in ``train.report_to`` cannot be imported."""


def active(report_to: list[str]) -> list[str]:
    return [t for t in report_to if t != "none"]


def check_installed(report_to: list[str]) -> None:
    """Fail before any data or model work when a requested tracker's package is missing."""
    missing = [t for t in active(report_to) if importlib.util.find_spec(_INSTALL[t][0]) is None]
    if missing:
        hints = sorted({_INSTALL[t][1] for t in missing})
        raise TrackerNotInstalled(f"train.report_to: {', '.join(missing)} requested but not installed; "
                                  f"install with: {' and '.join(hints)} (or drop it: train.report_to=none)")


# Values this module put into os.environ: a second run in the same process (a notebook) gets its
# own directory instead of inheriting the first run's as if the user had set it.
_SET_HERE: dict[str, str] = {}


def _default(var: str, value: str) -> str:
    """The user's setting of ``var`` if any, else ``value`` (exported for the tracker to read)."""
    current = os.environ.get(var)
    if current is None or _SET_HERE.get(var) == current:
        os.environ[var] = _SET_HERE[var] = value
    return os.environ[var]


def setup_tracking(report_to: list[str], run_dir: Path) -> dict:
    """Check the trackers, point their files into ``run_dir`` unless the user chose a place through
    the tracker's own environment variable, and return the record of where the logs go."""
    check_installed(report_to)
    run_dir = Path(run_dir).resolve()
    record: dict = {"report_to": list(report_to)}
    for tracker in active(report_to):
        if tracker == "tensorboard":
            record[tracker] = {"logging_dir": _default("TENSORBOARD_LOGGING_DIR", str(run_dir / "tb"))}
        elif tracker == "mlflow":
            # MLflow's own default is ./mlflow.db in whatever directory training started from.
            record[tracker] = {"tracking_uri": _default("MLFLOW_TRACKING_URI", f"sqlite:///{run_dir / 'mlflow.db'}"),
                               "experiment": _default("MLFLOW_EXPERIMENT_NAME", PROJECT), "run_name": run_dir.name}
        elif tracker == "wandb":
            wandb_dir = _default("WANDB_DIR", str(run_dir))  # wandb writes WANDB_DIR/wandb/<run>
            record[tracker] = {"dir": str(Path(wandb_dir) / "wandb"), "project": _default("WANDB_PROJECT", PROJECT),
                               "mode": os.environ.get("WANDB_MODE", "online"), "run_name": run_dir.name}
        elif tracker == "trackio":
            # read when trackio is first imported, which the Trainer does after this
            record[tracker] = {"dir": _default("TRACKIO_DIR", str(run_dir / "trackio")), "project": PROJECT,
                               "run_name": run_dir.name}
    return record


def memory_snapshot() -> dict:
    """Peak GPU memory (allocated and reserved) in MiB, or the process's peak RSS on CPU."""
    import torch

    if torch.cuda.is_available():
        return {"peak_mem_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                "peak_mem_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20, 1)}
    import resource

    return {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


class ProjectMetrics(TrainerCallback):
    """tokens/s (since the previous train log) and peak memory, added to the Trainer's own log
    events by ``KitrecSFTTrainer.log`` so metrics.jsonl and every ``report_to`` tracker get them."""

    def __init__(self, tokens_seen: Callable[[], int]):
        self.tokens_seen = tokens_seen
        self._t: float | None = None
        self._tokens = 0

    def on_train_begin(self, args, state, control, **kw):
        self._t, self._tokens = time.perf_counter(), self.tokens_seen()

    def add_to(self, logs: dict) -> dict:
        if "loss" in logs and self._t is not None:
            now, tokens = time.perf_counter(), self.tokens_seen()
            if now > self._t and tokens > self._tokens:
                logs["tokens_per_s"] = round((tokens - self._tokens) / (now - self._t), 1)
            self._t, self._tokens = now, tokens
        memory = memory_snapshot()
        if any(k.startswith("eval_") for k in logs):
            # Trackers file un-prefixed keys under train/; an evaluation's peak belongs under eval/.
            memory = {f"eval_{k}": v for k, v in memory.items()}
        logs.update(memory)
        return logs

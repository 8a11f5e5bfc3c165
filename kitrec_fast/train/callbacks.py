"""Trainer callbacks: metrics.jsonl, the rich console, and checkpoint-on-signal."""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

from transformers import TrainerCallback


class MetricsLogger(TrainerCallback):
    """Appends every log event to ``metrics.jsonl``.

    ``loss``/``eval_loss`` are the label-smoothed objective; ``nll``/``eval_nll`` the plain
    cross-entropy over the same tokens.
    """

    def __init__(self, path: Path, attempt: int = 1):
        self.path = Path(path)
        self.attempt = attempt  # which try of the run logged a row (see rundir.retire_abandoned_metrics)

    def on_log(self, args, state, control, logs=None, **kw):
        # tokens/s and peak memory are already in ``logs`` (tracking.ProjectMetrics via the trainer's log())
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "time": time.time(),
               "attempt": self.attempt, **(logs or {})}
        new = not self.path.exists()
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if new:
            self.path.chmod(0o644)  # whatever the umask: every file of a run is readable by others
        state.kitrec_last_row = row


class RichProgress(TrainerCallback):
    """A progress bar (step, loss, tokens/s, memory, ETA) and an eval table per evaluation."""

    def __init__(self, console):
        self.console = console
        self.progress = None
        self.task = None
        self.best = math.inf

    def on_train_begin(self, args, state, control, **kw):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, info="")

    def on_step_end(self, args, state, control, **kw):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kw):
        row = getattr(state, "kitrec_last_row", None) or logs or {}
        if self.progress is None:
            return
        if "loss" in (logs or {}):
            mem = row.get("peak_mem_allocated_mib", row.get("peak_rss_mib"))
            info = f"loss {logs['loss']:.4f}"
            if "tokens_per_s" in row:
                info += f"  {row['tokens_per_s']:.0f} tok/s"
            if mem is not None:
                info += f"  {mem / 1024:.1f} GiB"
            self.progress.update(self.task, info=info)

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        from rich.table import Table

        metrics = metrics or {}
        loss = metrics.get("eval_loss")
        if loss is not None and loss < self.best:
            self.best = loss
        table = Table(title=f"eval @ step {state.global_step}", show_header=True)
        for col in ("eval_loss (smoothed)", "eval_nll (plain CE)", "best eval_loss"):
            table.add_column(col, justify="right")
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        table.add_row(fmt(loss), fmt(metrics.get("eval_nll")), fmt(self.best if self.best < math.inf else None))
        (self.progress.console if self.progress else self.console).print(table)

    def on_train_end(self, args, state, control, **kw):
        if self.progress is not None:
            self.progress.stop()


class CheckpointOnSignal(TrainerCallback):
    """Ctrl-C or SIGTERM: finish the current step, write a checkpoint, stop. A second one aborts.

    The first signal says so at once: the step (and an evaluation due at it) can take a while.
    """

    def __init__(self, stream=None):
        self.requested = None
        self.stream = stream
        self._old = {}

    def install(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        return self

    def uninstall(self):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested is not None:
            self._say(f"\n{name} again: aborting now, without saving.")
            raise KeyboardInterrupt
        self.requested = name
        self._say(f"\n{name}: finishing the current step, then writing a checkpoint and exiting "
                  f"(rerun the same command to resume). Press Ctrl-C again to abort without saving.")

    def _say(self, text: str) -> None:
        """After the request is recorded: a write that fails (stderr a pipe whose reader is gone,
        as under `| tee` when Ctrl-C ended tee too) must not stop the checkpoint."""
        import sys

        stream = self.stream or sys.stderr
        try:
            stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    def on_step_end(self, args, state, control, **kw):
        if self.requested is not None:
            control.should_save = True
            control.should_training_stop = True
        return control


class ProjectCardOnSave(TrainerCallback):
    """After every checkpoint, the project's model card replaces the generic one TRL writes there,
    so an interrupted run directory describes itself correctly."""

    def __init__(self, write):
        self.write = write

    def on_save(self, args, state, control, **kw):
        self.write(state)


class OnTrainBegin(TrainerCallback):
    """Calls ``fn`` once training has really started: the Trainer fires ``on_train_begin`` after it
    has loaded a resumed checkpoint's weights, optimizer and scheduler."""

    def __init__(self, fn):
        self.fn = fn
        self.fired = False

    def on_train_begin(self, args, state, control, **kw):
        self.fire()

    def fire(self) -> None:
        if not self.fired:
            self.fired = True
            self.fn()

"""One training run, end to end: config -> data -> backend -> trainer -> run directory.

Run directory layout::

    RUN_DIR/
      resolved_config.yaml     the recipe with overrides, headed by the command that ran it
      attempts.json            one entry per attempt: command, start, resumed checkpoint, accepted
                               config changes, wall time, outcome (an attempt a kill ended is marked
                               ``killed`` by the next start, with when it was last seen alive)
      train.log                what the console showed, plain text, appended by every attempt
      .train.lock              held (flock) while a process writes the directory; see kitrec_fast/dirlock.py
      environment.json         versions, GPU, git commit, the weights actually loaded, the trainer's classes
      data_report.json         what loading/validation/truncation did
      metrics.jsonl            one line per log/eval event (loss, nll, lr, tokens/s, memory) of the
                               run as it stands: rows of abandoned attempts after the checkpoint a
                               resume started from are moved to metrics.abandoned.jsonl
      loss_curves.png          train/eval loss, smoothed and plain
      checkpoint-N/            Trainer checkpoints, each complete or absent (a rerun resumes from the
                               newest that loads; see kitrec_fast/artifacts/checkpoints.py)
      .staging/                a save (or the adapter) being written; renamed into place once synced
      broken/checkpoint-N/     a checkpoint that failed the resume check, set aside (never deleted)
      adapter/                 the best adapter (safetensors) + tokenizer + model card
      README.md                the model card (marked "interrupted"/"in progress" until finished)
      summary.json             final numbers (wall time counts every attempt)

Nothing is written before training has really started (data prepared, model loaded, a resumed
checkpoint's state loaded), so a bad dataset or model name leaves no run directory behind and a
resume that cannot start leaves it as it was; a crash before the first checkpoint removes the directory it
created. (The lock is taken first, in a directory made for it if missing; both go when the process ends.)
A rerun whose checkpoint ends the schedule trains no step: it writes the adapter, plots, card and
summary that are missing. Under torchrun / accelerate launch only rank 0 writes all of this (the Trainer has every
rank write its own RNG state into each checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kitrec_fast.artifacts import rundir
from kitrec_fast.config import RunConfig
from kitrec_fast.console import make_console
from kitrec_fast.errors import UserError
from kitrec_fast.fsio import atomic_write_json, check_writable, make_shareable


class NoGPUError(UserError):
    """A real (non-smoke) run without a CUDA device."""


class ConfigChangedError(UserError):
    """The run directory was trained with other training-relevant settings."""


class TrainingDataError(UserError):
    """The dataset cannot be loaded, validated or rendered; the message names the row or option."""


class TrainingAborted(UserError):
    """A second Ctrl-C: stopped at once, nothing saved since the last checkpoint."""

    exit_code = 130


OOM_HELP = (
    "Out of GPU memory. Knobs, most effective first: data.max_length (e.g. 4096), "
    "train.per_device_batch_size 1 with train.gradient_accumulation_steps 32 (same effective batch), "
    "train.gradient_checkpointing unsloth (fast path) or standard, train.loss_chunk_size 512, "
    "data.max_candidates 30. Or pick a memory profile: --profile 24gb."
)


@dataclass
class RunResult:
    run_dir: Path
    summary: dict
    exit_code: int = 0


@dataclass
class RunDirState:
    """What the output directory already holds."""

    finished: bool = False
    resume: Path | None = None
    relevant_changes: dict = field(default_factory=dict)
    free_changes: dict = field(default_factory=dict)


def config_table(cfg: RunConfig, title: str = "kitrec_fast run"):
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    table.add_column("key", style="cyan")
    table.add_column("value")
    table.add_row("recipe", cfg.recipe)
    table.add_row("backend", cfg.backend)
    table.add_row("output_dir", cfg.resolved_output_dir)
    table.add_row("smoke", str(cfg.smoke))
    for section in ("data", "model", "lora", "train"):
        for key, value in getattr(cfg, section).__dict__.items():
            table.add_row(f"{section}.{key}", str(value))
    return table


def check_hardware(cfg: RunConfig, command: str) -> str | None:
    """None, or why this machine cannot run ``cfg`` (one line, the user's command + ``--smoke``)."""
    import torch

    if torch.cuda.is_available() or cfg.smoke:
        return None
    return ("No CUDA GPU found; training Qwen3-14B needs one (24-48 GB). On this machine run the embedded "
            f"smoke configuration instead: {command} --smoke")


def check_trainer_names(cfg: RunConfig) -> None:
    """Scheduler and optimizer names, checked before minutes of data preparation and model loading.

    In a real run this is called after the backend import (transformers must not load before unsloth does)."""
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    for option, value, enum in (("train.lr_scheduler", cfg.train.lr_scheduler, SchedulerType),
                                ("train.optim", cfg.train.optim, OptimizerNames)):
        names = [e.value for e in enum]
        if value not in names:
            raise UserError(f"{option}: unknown name {value!r}; one of: {', '.join(names)}")


def check_dataset_source(cfg: RunConfig) -> None:
    """A local dataset path that does not exist, found before any import or model loading."""
    name = cfg.data.dataset
    if name.startswith("embedded:"):
        return
    path = Path(name)
    looks_local = path.suffix in (".jsonl", ".json", ".parquet", ".gz") or name.startswith((".", "/", "~"))
    if looks_local and not path.expanduser().exists():
        raise TrainingDataError(f"data.dataset (--dataset): file not found: {name}")
    if path.expanduser().is_file() and not _has_content(path.expanduser()):
        raise TrainingDataError(f"data.dataset (--dataset): {name} is empty (no rows to train on)")


def scan_local_rows(cfg: RunConfig) -> str | None:
    """Dry run: a local dataset file streamed through the run's own reader and row check, so that a
    torn or malformed row stops the dry run as it would stop the run; returns the usable / bad count.

    One row at a time, nothing rendered or tokenized (seconds for a KitREC-sized file). The shipped
    samples (``embedded:``) and Hub datasets are not read here."""
    import itertools

    from kitrec_fast.badrow import BadRowError
    from kitrec_fast.data.load import iter_raw
    from kitrec_fast.data.schema import normalize_row

    name = cfg.data.dataset
    if name.startswith("embedded:") or not Path(name).expanduser().is_file():
        return None
    skip = cfg.data.on_bad_row == "skip"
    raw, _ = iter_raw(name, cfg.data.dataset_split, skip_bad_lines=skip)
    usable, bad = 0, 0
    for index, row in enumerate(itertools.islice(raw, cfg.data.limit)):
        try:
            normalize_row(row, index, require_target=True)
        except BadRowError as exc:
            if not skip:
                raise TrainingDataError(f"data.dataset (--dataset): {name} {exc}") from None
            bad += 1
        else:
            usable += 1
    if not usable:
        raise TrainingDataError(f"data.dataset (--dataset): none of the {bad} rows of {name} is usable")
    skipped = f", {bad} bad (skipped: data.on_bad_row=skip)" if bad else ""
    return f"{name}: {usable} usable rows{skipped}"


def check_hub_sources(cfg: RunConfig) -> None:
    """Dataset, tokenizer and base model named by Hub id: an unreachable Hub with nothing cached for
    one of them stops the run here, in seconds, before minutes of data preparation or model loading."""
    from kitrec_fast.backends.common import MODEL_OPTION
    from kitrec_fast.hub import require_hub

    local_data = cfg.data.dataset.lower().endswith((".jsonl", ".json", ".parquet", ".gz"))
    if not local_data:
        require_hub(cfg.data.dataset, "dataset", "data.dataset (--dataset)")
    if cfg.data.tokenizer:
        require_hub(cfg.data.tokenizer, "tokenizer", "data.tokenizer")
    require_hub(cfg.model.name, "model", MODEL_OPTION)


def _has_content(path: Path) -> bool:
    """Whether a local data file holds anything but whitespace (read up to the first such byte)."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            while chunk := fh.read(1 << 16):
                if chunk.strip():
                    return True
    except (OSError, EOFError):
        return True  # unreadable or not gzip after all: the loader names the problem
    return False


def run_is_complete(run_dir: Path) -> bool:
    """A finished run: its summary says so, and the adapter, card and plots were written."""
    path = Path(run_dir) / rundir.SUMMARY
    if not all((Path(run_dir) / name).is_file() for name in (
            rundir.SUMMARY, f"{rundir.ADAPTER_DIR}/adapter_config.json", "README.md", rundir.PLOT)):
        return False
    return not json.loads(path.read_text()).get("interrupted")


def inspect_run_dir(cfg: RunConfig, accept_config_change: bool = False) -> RunDirState:
    """Refuse to resume or "finish" a run directory trained with other training-relevant settings."""
    run_dir = Path(cfg.resolved_output_dir)
    state = RunDirState(finished=run_is_complete(run_dir), resume=rundir.last_checkpoint(run_dir))
    stored = rundir.read_resolved_raw(run_dir)
    if stored is None or not (state.finished or state.resume):
        return state  # nothing trained here yet: the new settings simply apply
    state.relevant_changes, state.free_changes = rundir.config_changes(stored, cfg)
    if not state.relevant_changes:
        return state
    changes = rundir.describe_changes(state.relevant_changes)
    if state.finished:
        longer = ""
        if {"train.max_steps", "train.epochs"} & set(state.relevant_changes):
            longer = ("A finished run is not extended to more steps: its learning-rate schedule was laid out "
                      "for the old length and has ended. ")
        raise ConfigChangedError(
            f"{run_dir} is a finished run trained with other settings ({changes}); nothing was trained. {longer}"
            "Train with these settings in a new run directory: add --output-dir NEW_DIR to the command.")
    unheld = rundir.changes_no_checkpoint_holds(state.relevant_changes)
    if unheld:
        raise ConfigChangedError(
            f"{run_dir} holds a run to resume ({state.resume.name}) whose checkpoint cannot take these changes, "
            f"--accept-config-change or not: {rundir.describe_changes(unheld)} (the saved adapter and optimizer "
            "state are made for the old values). Restore them, or use another --output-dir to start a new run.")
    if not accept_config_change:
        raise ConfigChangedError(
            f"{run_dir} holds a run to resume ({state.resume.name}) trained with other settings: {changes}. "
            "Restore them, use another --output-dir to start a new run, or add --accept-config-change to "
            "continue this run with the new settings (recorded in attempts.json).")
    return state


def validate(cfg: RunConfig, command: str, accept_config_change: bool = False, dry_run: bool = False) -> list[str]:
    """Everything checkable without data or model, in the real run's order; returns notes for a dry run.

    A dry run reports a missing GPU as a note (it is often done on another machine than the run)."""
    notes = []
    problem = check_hardware(cfg, command)
    if problem and not dry_run:
        raise NoGPUError(problem)
    if problem:
        notes.append(problem)
    check_dataset_source(cfg)
    check_writable(cfg.resolved_output_dir, "--output-dir")
    state = inspect_run_dir(cfg, accept_config_change)
    if dry_run:
        rows = scan_local_rows(cfg)
        if rows is not None:
            notes.append(rows)
        from kitrec_fast.hub import HubUnreachableError

        try:
            check_hub_sources(cfg)
        except HubUnreachableError as exc:  # not the configuration's fault: a note, as for a missing GPU
            notes.append(f"a run here would stop: {exc}")
        check_trainer_names(cfg)
        if state.finished:
            notes.append(f"{cfg.resolved_output_dir} is a finished run with these settings; a run does nothing.")
        elif schedule_ended(state.resume, cfg, state.relevant_changes):
            notes.append(f"{state.resume} ends its schedule: a run writes what is missing, training no step")
        elif state.resume is not None:
            notes.append(f"a run resumes from {state.resume}")
        if state.relevant_changes:
            notes.append("accepted changes: " + rundir.describe_changes(state.relevant_changes))
    return notes


def _prepare_data(cfg: RunConfig):
    from kitrec_fast.backends.common import resolve_model_path
    from kitrec_fast.data.pipeline import prepare
    from kitrec_fast.render.tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer(cfg.data.tokenizer or resolve_model_path(cfg.model.name),
                                   "data.tokenizer" if cfg.data.tokenizer else "model.name (no data.tokenizer set)")
        return tokenizer, prepare(cfg.data, tokenizer)
    except FileNotFoundError as exc:
        # The data stage's own errors (bad row, unreadable file, unknown tokenizer, a prompt or
        # template that does not fit) are UserErrors naming the row or option; a missing file is too.
        raise TrainingDataError(str(exc)) from exc


def run_training(cfg: RunConfig, command: str, console=None, accept_config_change: bool = False,
                 log=None) -> RunResult:
    """Train ``cfg`` into its run directory: each stage below in the order it runs. ``log`` (a
    :class:`kitrec_fast.train.runlog.RunLog`) is attached to the run's train.log once it is written."""
    run = _Run(cfg, command, console or make_console(), t0=time.perf_counter(), started_at=time.time(),
               run_dir=Path(cfg.resolved_output_dir), log=log)
    with contextlib.ExitStack() as held:
        finished = _checks(run, accept_config_change, held)
        if finished is not None:
            return finished
        _data(run)
        _model(run)
        trainer, started, stop_cb = _trainer(run)
        if run.ended:
            # The schedule ended before (Ctrl-C after its last checkpoint, or while the adapter,
            # summary or plots were written): finish what is missing, train no further step.
            started.fire()
            _load_end_state(run, trainer)
        else:
            _train(run, trainer, started, stop_cb)
        return _finish(run, trainer, stop_cb)


@dataclass
class _Run:
    """What the stages of one run hand on to the next."""

    cfg: RunConfig
    command: str
    console: Any
    t0: float
    started_at: float
    run_dir: Path
    log: Any = None  # runlog.RunLog: the console's copy, written to train.log from the first write on
    state: RunDirState = field(default_factory=RunDirState)
    main: bool = True  # rank 0 (or the only process): the one that writes the run directory
    created: bool = False  # the run directory did not exist before this attempt
    held: Any = None  # dirlock.Held: this process holds the run directory (rank 0 only)
    ended: bool = False  # the checkpoint resumed from is the end of its schedule: nothing left to train
    backend: Any = None
    resume: Any = None  # checkpoints.ResumePoint
    tracking: dict = field(default_factory=dict)
    tokenizer: Any = None
    prepared: Any = None
    loaded: Any = None
    env: dict = field(default_factory=dict)
    space: Any = None  # diskspace estimate
    attempts: list = field(default_factory=list)
    attempt: dict = field(default_factory=dict)

    @property
    def has_eval(self) -> bool:
        return len(self.prepared.validation) > 0

    def end_attempt(self, outcome: str, written: bool, keep_wall: bool = False) -> None:
        if not keep_wall:
            self.attempt["wall_seconds"] = round(time.perf_counter() - self.t0, 1)
        self.attempt["outcome"] = outcome
        if self.main and written:
            rundir.write_attempts(self.run_dir, self.attempts)


def _checks(run: _Run, accept_config_change: bool, stack: contextlib.ExitStack) -> RunResult | None:
    """Everything that can refuse the run before data or model load; a finished run's result."""
    from kitrec_fast.parallel import is_main_process

    cfg, console, run_dir = run.cfg, run.console, run.run_dir
    problem = check_hardware(cfg, run.command)
    if problem:
        raise NoGPUError(problem)
    check_dataset_source(cfg)
    check_writable(cfg.resolved_output_dir, "--output-dir")
    # Under torchrun every rank trains into this directory, but only rank 0 writes it: it alone holds it.
    run.main = is_main_process()
    if run.main:
        from kitrec_fast.dirlock import hold_made

        # Made for the lock if missing, and removed again when the run is refused before writing.
        run.held = stack.enter_context(hold_made(run_dir, rundir.LOCK, "--output-dir", "another training run"))
        run.created = run.held.made
    run.state = inspect_run_dir(cfg, accept_config_change)
    if run.state.finished:
        summary = json.loads((run_dir / rundir.SUMMARY).read_text())
        console.print(f"[green]{run_dir} is a finished run[/] with these settings (step {summary.get('global_step')}, "
                      f"best eval_loss {summary.get('best_eval_loss')}); nothing to do. Use another --output-dir "
                      "to train again.")
        return RunResult(run_dir, summary)
    check_hub_sources(cfg)
    console.print(config_table(cfg))

    # The backend first: on the fast path unsloth must patch transformers/trl before they load.
    from kitrec_fast.backends import get_backend

    run.backend = get_backend(cfg.backend)
    check_trainer_names(cfg)
    from kitrec_fast.artifacts import checkpoints

    # The newest checkpoint that loads; newer broken ones are set aside once the run dir is written.
    run.resume = checkpoints.find_resume(run_dir)
    run.state.resume = run.resume.checkpoint
    run.ended = schedule_ended(run.state.resume, cfg, run.state.relevant_changes)
    for line in run.resume.notices() if run.main else ():
        console.print(f"[yellow]checkpoint[/] {line}")
    from kitrec_fast.train.tracking import setup_tracking

    run.tracking = setup_tracking(cfg.train.report_to, run_dir)  # a missing tracker fails here, before any loading
    return None


def _data(run: _Run) -> None:
    cfg = run.cfg
    run.tokenizer, run.prepared = _prepare_data(cfg)
    run.console.print(f"[green]data[/] {len(run.prepared.train)} train / {len(run.prepared.validation)} validation "
                      f"rows prepared in {time.perf_counter() - run.t0:.1f}s")
    if len(run.prepared.train) == 0:
        raise TrainingDataError(f"no training rows left after validation of {cfg.data.dataset} "
                                f"(data.val_fraction={cfg.data.val_fraction}, data.limit={cfg.data.limit})")


def _model(run: _Run) -> None:
    """Load the model, record what was loaded, and check the disk can hold what the run will write."""
    from kitrec_fast.backends import runtime_facts
    from kitrec_fast.backends.common import keep_4bit_layout_trainable

    cfg, console = run.cfg, run.console
    loaded = run.loaded = run.backend.load_model(cfg)
    loaded.notes["cpu_4bit_repack"] = keep_4bit_layout_trainable(loaded.model)  # else evaluations break training
    trainable, total = loaded.trainable_parameters()
    fused = "n/a (peft baseline)" if loaded.fused_lora_modules is None else str(loaded.fused_lora_modules)
    console.print(f"[green]model[/] {loaded.weights} ({loaded.backend}, {loaded.compute_dtype}); "
                  f"trainable {trainable:,} / {total:,} params; fused LoRA modules: {fused}")
    if loaded.backend == "unsloth" and loaded.fused_lora_modules == 0:
        import torch

        if torch.cuda.is_available():
            console.print("[yellow]warning[/] Unsloth patched no fused LoRA kernels (check lora.dropout/bias)")
    run.env = rundir.environment_record({"weights": loaded.weights, "requested_model": loaded.requested,
                                         "backend": loaded.backend, "compute_dtype": loaded.compute_dtype,
                                         "fused_lora_modules": loaded.fused_lora_modules,
                                         "trainable_params": trainable, "total_params": total, **loaded.notes,
                                         **runtime_facts(loaded.model)})
    run.env["tracking"] = run.tracking
    old_env = run.run_dir / rundir.ENVIRONMENT
    if old_env.is_file():  # what earlier attempts' steps observed, until this one observes its own
        with contextlib.suppress(ValueError):
            run.env.update({k: v for k, v in json.loads(old_env.read_text()).items() if k in _OBSERVED})
    from kitrec_fast.artifacts.diskspace import check_run_space

    run.space = check_run_space(loaded.model, cfg, run.run_dir, len(run.prepared.train))


def _trainer(run: _Run):
    """This attempt's record, the callbacks, and the Trainer; returns ``(trainer, started, stop_cb)``."""
    from kitrec_fast.artifacts import checkpoints
    from kitrec_fast.train.callbacks import (CheckpointOnSignal, MetricsLogger, OnTrainBegin, ProjectCardOnSave,
                                             RichProgress)
    from kitrec_fast.train.trainer import make_trainer, trainer_bases
    from transformers import EarlyStoppingCallback

    cfg, console, run_dir, state = run.cfg, run.console, run.run_dir, run.state
    run.attempts = rundir.read_attempts(run_dir)
    for lost in rundir.mark_killed_attempts(run_dir, run.attempts, run.held.previous if run.held else None):
        seen = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lost["last_seen_alive"]))
        console.print(f"[yellow]attempt {lost['attempt']}[/] was killed (it recorded no end); last seen alive {seen}")
    run.attempt = {"attempt": len(run.attempts) + 1, "command": run.command, "started_at": run.started_at,
                   "resumed_from": state.resume.name if state.resume else None,
                   "accepted_config_changes": {k: list(v) for k, v in state.relevant_changes.items()},
                   "changed_settings": {k: list(v) for k, v in state.free_changes.items()},
                   "wall_seconds": None, "outcome": "running"}
    run.attempts.append(run.attempt)
    resume_step = int(state.resume.name.split("-")[-1]) if state.resume else 0

    def start_attempt() -> None:
        # The run directory is written from here on (by rank 0 alone when data parallel): once training
        # has really started, with the checkpoint's weights and optimizer state loaded. A resume that
        # fails before that leaves every file as it was.
        if not run.main:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if run.log is not None:
            began = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started_at))
            run.log.attach(run_dir / rundir.LOG, f"===== attempt {run.attempt['attempt']}, {began}: {run.command}")
        checkpoints.clear_for_resume(run_dir, run.resume)
        torn = rundir.drop_torn_metrics(run_dir)
        if torn:
            console.print(f"[yellow]metrics[/] {torn}")
        # (An attempt that only finishes trains no step: the rows, end-of-training one included, stand.)
        moved = 0 if run.ended else rundir.retire_abandoned_metrics(run_dir, resume_step, run.attempt["attempt"] - 1)
        if moved:
            console.print(f"[cyan]metrics[/] {moved} rows of an earlier attempt after step {resume_step} moved to "
                          f"{rundir.ABANDONED_METRICS}")
        if state.relevant_changes:
            console.print("[yellow]accepted config change[/] " + rundir.describe_changes(state.relevant_changes))
        rundir.write_attempts(run_dir, run.attempts)
        rundir.write_resolved_config(run_dir, cfg, run.command)
        atomic_write_json(run_dir / "data_report.json", run.prepared.report)
        atomic_write_json(run_dir / rundir.ENVIRONMENT, run.env)

    metrics_cb = MetricsLogger(run_dir / rundir.METRICS, attempt=run.attempt["attempt"])
    stop_cb = CheckpointOnSignal()
    card_cb = ProjectCardOnSave(lambda st: _write_card(run_dir, cfg, run.env, {
        "weights": run.loaded.weights, "global_step": st.global_step, "max_steps": st.max_steps,
        "best_eval_loss": st.best_metric, "best_checkpoint": st.best_model_checkpoint,
        "status": "in progress", "warnings": getattr(cfg, "_warnings", [])}))
    started = OnTrainBegin(start_attempt)
    callbacks = [started, metrics_cb, RichProgress(console), stop_cb, card_cb] if run.main else [started, stop_cb]
    if run.has_eval and cfg.train.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(cfg.train.early_stopping_patience,
                                               cfg.train.early_stopping_threshold))
    trainer = make_trainer(cfg, run.loaded.model, run.tokenizer, run.prepared.train,
                           run.prepared.validation if run.has_eval else None, str(run_dir), callbacks)
    trainer.kitrec_checkpoint_bytes = run.space.checkpoint
    run.env["trainer_bases"] = trainer_bases(trainer)
    if run.ended:
        console.print(f"[cyan]finishing[/] {run_dir}: {state.resume.name} is the end of its schedule; writing what "
                      "is missing (adapter, summary, card, plots), no step is trained")
    elif state.resume is not None:
        console.print(f"[cyan]resuming[/] from {state.resume}")
    return trainer, started, stop_cb


def _train(run: _Run, trainer, started, stop_cb) -> None:
    """``trainer.train``, with Ctrl-C, out-of-memory and a checkpoint that does not fit turned into user errors."""
    import torch

    run_dir, state = run.run_dir, run.state
    stop_cb.install()
    try:
        trainer.train(resume_from_checkpoint=str(state.resume) if state.resume else None)
    except KeyboardInterrupt:
        stop_cb.uninstall()
        run.end_attempt("aborted", started.fired)
        newest = rundir.last_checkpoint(run_dir)
        if run.main and run_dir.is_dir():  # the card of the last checkpoint would still say "in progress"
            _write_card(run_dir, run.cfg, run.env, {
                "weights": run.loaded.weights, "global_step": trainer.state.global_step,
                "max_steps": trainer.state.max_steps, "best_eval_loss": trainer.state.best_metric,
                "best_checkpoint": trainer.state.best_model_checkpoint, "status": "aborted",
                "newest_checkpoint": newest.name if newest else None,
                "warnings": getattr(run.cfg, "_warnings", [])})
        raise TrainingAborted(
            f"aborted at step {trainer.state.global_step} without saving; "
            + (f"rerun the same command to resume from {newest.name}." if newest else
               "no checkpoint was written yet.")) from None
    except BaseException as exc:
        stop_cb.uninstall()
        run.end_attempt("failed", started.fired)
        if run.main and run.created and rundir.last_checkpoint(run_dir) is None:
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing trained: leave no run directory behind
        if isinstance(exc, torch.OutOfMemoryError):
            raise UserError(f"{OOM_HELP}\n({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
        if state.resume is not None and not started.fired and "state_dict" in str(exc):
            # torch's load_state_dict: the checkpoint's tensors do not fit this model; name the first misfit
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            detail = next((ln for ln in lines if ln.startswith(("size mismatch", "Missing key", "Unexpected key"))),
                          lines[0])
            raise ConfigChangedError(
                f"{state.resume} does not fit the model these settings build ({detail}); "
                f"nothing in {run_dir} was changed. Was it trained with other LoRA or model settings than "
                f"{rundir.RESOLVED_CONFIG} records? Use another --output-dir to start a new run.") from None
        raise
    stop_cb.uninstall()
    if stop_cb.requested:
        run.end_attempt("interrupted", started.fired)


def schedule_ended(checkpoint: Path | None, cfg: RunConfig, changes: dict) -> bool:
    """Whether ``checkpoint`` ends its run's schedule: its step is the last one (``max_steps``, as the
    Trainer laid it out, or an accepted new ``train.max_steps``), or early stopping stopped it there.

    Resuming from it would train a step past the end: the Trainer checks for the end only after a step."""
    if checkpoint is None:
        return False
    from kitrec_fast.artifacts.checkpoints import TRAINER_STATE

    state = json.loads((Path(checkpoint) / TRAINER_STATE).read_text())
    step, planned = int(state.get("global_step") or 0), int(state.get("max_steps") or 0)
    if {"train.max_steps", "train.epochs"} & set(changes):
        planned = cfg.train.max_steps  # a new length accepted on resume (<= 0: by epochs, the Trainer's to say)
    if planned > 0 and step >= planned:
        return True
    stopper = (state.get("stateful_callbacks") or {}).get("EarlyStoppingCallback") or {}
    patience = (stopper.get("args") or {}).get("early_stopping_patience") or 0
    counter = (stopper.get("attributes") or {}).get("early_stopping_patience_counter") or 0
    return patience > 0 and counter >= patience


def _load_end_state(run: _Run, trainer) -> None:
    """Where a finished ``trainer.train`` leaves the trainer, from the checkpoint that ended the
    schedule: its state, and the weights it ends with (the best checkpoint's when evaluating)."""
    from transformers import TrainerState

    ckpt = run.state.resume
    trainer.state = TrainerState.load_from_json(str(ckpt / "trainer_state.json"))
    best = trainer.state.best_model_checkpoint
    if trainer.args.load_best_model_at_end and best and Path(best).is_dir():
        trainer._load_from_checkpoint(best)
    else:
        trainer._load_from_checkpoint(str(ckpt))


def _finish(run: _Run, trainer, stop_cb) -> RunResult:
    """Summary, adapter, plots and card; an interrupted run stops after its summary and card.

    The attempt is ``finished`` only once all of that is written; a Ctrl-C before that leaves it
    ``aborted``, and a rerun writes what is missing without training."""
    try:
        result = _write_results(run, trainer, stop_cb)
    except KeyboardInterrupt:
        run.end_attempt("aborted", True)
        raise TrainingAborted(f"aborted while writing the results of step {trainer.state.global_step}; rerun the "
                              "same command to write them (no step is trained again).") from None
    if not stop_cb.requested:
        run.end_attempt("finished", True, keep_wall=True)  # the wall time the summary states
    return result


_OBSERVED = ("autocast", "activation_dtype", "final_hidden_dtype")


def _write_results(run: _Run, trainer, stop_cb) -> RunResult:
    from kitrec_fast.artifacts import checkpoints
    from kitrec_fast.artifacts.diskspace import SMALL_FILES
    from kitrec_fast.backends import runtime_facts

    cfg, console, run_dir, env = run.cfg, run.console, run.run_dir, run.env
    # What the training steps really ran with (autocast, activation dtype) is known only now; an
    # attempt that trained no step keeps what the earlier attempts observed.
    facts = runtime_facts(run.loaded.model, trainer)
    env.update({k: v for k, v in facts.items() if trainer.kitrec_observed or k not in _OBSERVED})
    if run.main:
        atomic_write_json(run_dir / rundir.ENVIRONMENT, env)

    tstate = trainer.state
    interrupted = stop_cb.requested
    if not interrupted:
        run.attempt["wall_seconds"] = round(time.perf_counter() - run.t0, 1)
    summary = {
        "recipe": cfg.recipe, "backend": cfg.backend, "weights": run.loaded.weights,
        "status": "interrupted" if interrupted else "finished",
        "global_step": tstate.global_step, "max_steps": tstate.max_steps,
        "best_eval_loss": tstate.best_metric, "best_checkpoint": tstate.best_model_checkpoint,
        "interrupted": interrupted, "loss_path": trainer.kitrec_loss_path,
        "early_stopped": bool(run.has_eval and tstate.global_step < tstate.max_steps and not interrupted),
        "train_rows": len(run.prepared.train), "val_rows": len(run.prepared.validation),
        "world_size": cfg.train.world_size,
        "attempts": len(run.attempts), "wall_seconds": rundir.total_wall_seconds(run_dir, run.attempts),
        "warnings": getattr(cfg, "_warnings", []),
    }
    if interrupted:
        if run.main:
            _write_card(run_dir, cfg, env, summary)
            atomic_write_json(run_dir / rundir.SUMMARY, summary)
        console.print(f"[yellow]{interrupted}[/]: checkpoint written at step {tstate.global_step}; "
                      f"rerun the same command to resume.")
        return RunResult(run_dir, summary, exit_code=128 + int(getattr(signal, interrupted)))

    adapter_dir = run_dir / rundir.ADAPTER_DIR
    staged = checkpoints.staging_path(run_dir, rundir.ADAPTER_DIR)  # complete or absent, as checkpoints
    summary["adapter_dir"] = str(adapter_dir)
    with checkpoints.stop_on_full_disk("the adapter", run_dir, lambda: run.space.adapter + SMALL_FILES,
                                       staged if run.main else None):
        trainer.save_model(str(staged))  # the best checkpoint, reloaded at the end of training (rank 0 writes)
        if run.main:
            run.tokenizer.save_pretrained(str(staged))
            _write_card(staged, cfg, env, summary)
            checkpoints.replace_dir(staged, adapter_dir)
    if not run.main:
        return RunResult(run_dir, summary)
    make_shareable(adapter_dir)  # safetensors writes its file 0600; every run file is 0644
    from kitrec_fast import faults

    faults.reached("results")
    from kitrec_fast.artifacts.plots import plot_loss_curves

    plot_loss_curves(rundir.read_metrics(run_dir), run_dir / rundir.PLOT, title=f"{cfg.recipe} ({cfg.backend})")
    _write_card(run_dir, cfg, env, summary)
    atomic_write_json(run_dir / rundir.SUMMARY, summary)
    _print_summary(console, summary)
    if cfg.push_to_hub:
        from kitrec_fast.artifacts.push import push_run

        push_run(run_dir, cfg.push_to_hub)
    return RunResult(run_dir, summary)


def _write_card(directory: Path, cfg: RunConfig, env: dict, summary: dict) -> None:
    from kitrec_fast.artifacts.model_card import write_model_card

    write_model_card(Path(directory) / "README.md", cfg, summary, env)


def _print_summary(console, summary: dict) -> None:
    from rich.table import Table

    table = Table(title="run summary")
    table.add_column("key", style="cyan")
    table.add_column("value")
    for key in ("recipe", "backend", "weights", "global_step", "best_eval_loss", "best_checkpoint",
                "early_stopped", "adapter_dir", "attempts", "wall_seconds"):
        table.add_row(key, str(summary.get(key)))
    console.print(table)

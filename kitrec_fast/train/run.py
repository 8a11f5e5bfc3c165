"""One training run, end to end: config -> data -> backend -> trainer -> run directory.

Run directory layout::

    RUN_DIR/
      resolved_config.yaml   the recipe with overrides, headed by the command that ran it
      environment.json       versions, GPU, git commit, the weights actually loaded
      data_report.json       what loading/validation/truncation did
      metrics.jsonl          one line per log/eval event (loss, nll, lr, tokens/s, memory)
      loss_curves.png        train/eval loss, smoothed and plain
      checkpoint-N/          Trainer checkpoints (a rerun resumes from the newest)
      adapter/               the best adapter (safetensors) + tokenizer + model card
      README.md              the model card
      summary.json           final numbers
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kitrec_fast.artifacts import rundir
from kitrec_fast.console import make_console
from kitrec_fast.config import RunConfig
from kitrec_fast.errors import UserError  # kitrec_fast.recipes._main catches it from here


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


def check_hardware(cfg: RunConfig) -> None:
    import torch

    if not torch.cuda.is_available() and not cfg.smoke:
        raise UserError(
            "No CUDA GPU found. Training Qwen3-14B needs one (24-48 GB). On this machine run the embedded "
            f"smoke configuration instead:  python -m kitrec_fast.recipes.{_family(cfg.recipe)} --smoke")


def check_trainer_names(cfg: RunConfig) -> None:
    """Scheduler and optimizer names, checked before minutes of data preparation and model loading.

    Called after the backend import (transformers must not load before unsloth does)."""
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    for option, value, enum in (("train.lr_scheduler", cfg.train.lr_scheduler, SchedulerType),
                                ("train.optim", cfg.train.optim, OptimizerNames)):
        names = [e.value for e in enum]
        if value not in names:
            raise UserError(f"{option}: unknown name {value!r}; one of: {', '.join(names)}")


def run_is_complete(run_dir: Path) -> bool:
    """A finished run: its summary says so and the adapter was written."""
    path = run_dir / "summary.json"
    if not path.is_file() or not (run_dir / rundir.ADAPTER_DIR / "adapter_config.json").is_file():
        return False
    return not json.loads(path.read_text()).get("interrupted")


def _family(recipe: str) -> str:
    return recipe.rsplit("_set", 1)[0] if "_set" in recipe else recipe


def run_training(cfg: RunConfig, command: str | None = None, console=None) -> RunResult:
    console = console or make_console()
    command = command or " ".join(shlex.quote(a) for a in ["python", "-m", "kitrec_fast"] + sys.argv[1:])
    check_hardware(cfg)
    run_dir = Path(cfg.resolved_output_dir)
    if run_is_complete(run_dir):
        summary = json.loads((run_dir / "summary.json").read_text())
        console.print(f"[green]{run_dir} is a finished run[/] (step {summary.get('global_step')}, best eval_loss "
                      f"{summary.get('best_eval_loss')}); nothing to do. Use another --output-dir to train again.")
        return RunResult(run_dir, summary)
    run_dir.mkdir(parents=True, exist_ok=True)
    console.print(config_table(cfg))
    rundir.write_resolved_config(run_dir, cfg, command)

    # The backend first: on the fast path unsloth must patch transformers/trl before they load.
    from kitrec_fast.backends import get_backend, runtime_facts

    backend = get_backend(cfg.backend)
    check_trainer_names(cfg)
    from kitrec_fast.train.tracking import setup_tracking

    tracking = setup_tracking(cfg.train.report_to, run_dir)  # a missing tracker fails here, before any loading
    from kitrec_fast.backends.common import resolve_model_path
    from kitrec_fast.data.pipeline import prepare
    from kitrec_fast.render.tokenizer import load_tokenizer

    t0 = time.perf_counter()
    tokenizer = load_tokenizer(cfg.data.tokenizer or resolve_model_path(cfg.model.name))
    prepared = prepare(cfg.data, tokenizer)
    (run_dir / "data_report.json").write_text(json.dumps(prepared.report, indent=2, default=str))
    console.print(f"[green]data[/] {len(prepared.train)} train / {len(prepared.validation)} validation rows "
                  f"prepared in {time.perf_counter() - t0:.1f}s")
    if len(prepared.train) == 0:
        raise UserError(f"no training rows left after validation of {cfg.data.dataset}; see data_report.json")

    loaded = backend.load_model(cfg)
    trainable, total = loaded.trainable_parameters()
    fused = "n/a (peft baseline)" if loaded.fused_lora_modules is None else str(loaded.fused_lora_modules)
    console.print(f"[green]model[/] {loaded.weights} ({loaded.backend}, {loaded.compute_dtype}); "
                  f"trainable {trainable:,} / {total:,} params; fused LoRA modules: {fused}")
    if loaded.backend == "unsloth" and loaded.fused_lora_modules == 0:
        import torch

        if torch.cuda.is_available():
            console.print("[yellow]warning[/] Unsloth patched no fused LoRA kernels (check lora.dropout/bias)")
    env = rundir.environment_record({"weights": loaded.weights, "requested_model": loaded.requested,
                                     "backend": loaded.backend, "compute_dtype": loaded.compute_dtype,
                                     "fused_lora_modules": loaded.fused_lora_modules,
                                     "trainable_params": trainable, "total_params": total, **loaded.notes,
                                     **runtime_facts(loaded.model)})
    env["tracking"] = tracking
    (run_dir / rundir.ENVIRONMENT).write_text(json.dumps(env, indent=2, default=str))

    from kitrec_fast.train.callbacks import CheckpointOnSignal, MetricsLogger, RichProgress
    from kitrec_fast.train.trainer import make_trainer
    from transformers import EarlyStoppingCallback

    metrics_cb = MetricsLogger(run_dir / rundir.METRICS)
    stop_cb = CheckpointOnSignal()
    callbacks = [metrics_cb, RichProgress(console), stop_cb]
    has_eval = len(prepared.validation) > 0
    if has_eval and cfg.train.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(cfg.train.early_stopping_patience,
                                               cfg.train.early_stopping_threshold))
    trainer = make_trainer(cfg, loaded.model, tokenizer, prepared.train, prepared.validation if has_eval else None,
                           str(run_dir), callbacks)
    metrics_cb.trainer = trainer
    resume = rundir.last_checkpoint(run_dir)
    if resume is not None:
        console.print(f"[cyan]resuming[/] from {resume}")

    import torch

    stop_cb.install()
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except torch.OutOfMemoryError as exc:
        raise UserError(f"{OOM_HELP}\n({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
    finally:
        stop_cb.uninstall()

    state = trainer.state
    summary = {
        "recipe": cfg.recipe, "backend": cfg.backend, "weights": loaded.weights,
        "global_step": state.global_step, "max_steps": state.max_steps,
        "best_eval_loss": state.best_metric, "best_checkpoint": state.best_model_checkpoint,
        "interrupted": stop_cb.requested, "loss_path": trainer.kitrec_loss_path,
        "early_stopped": bool(has_eval and state.global_step < state.max_steps and not stop_cb.requested),
        "train_rows": len(prepared.train), "val_rows": len(prepared.validation),
        "wall_seconds": round(time.perf_counter() - t0, 1), "warnings": getattr(cfg, "_warnings", []),
    }
    if stop_cb.requested:
        console.print(f"[yellow]{stop_cb.requested}[/]: checkpoint written at step {state.global_step}; "
                      f"rerun the same command to resume.")
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        return RunResult(run_dir, summary)

    adapter_dir = run_dir / rundir.ADAPTER_DIR
    trainer.save_model(str(adapter_dir))  # the best checkpoint, reloaded at the end of training
    tokenizer.save_pretrained(str(adapter_dir))
    summary["adapter_dir"] = str(adapter_dir)
    from kitrec_fast.artifacts.model_card import write_model_card
    from kitrec_fast.artifacts.plots import plot_loss_curves

    plot_loss_curves(rundir.read_metrics(run_dir), run_dir / "loss_curves.png", title=f"{cfg.recipe} ({cfg.backend})")
    write_model_card(run_dir / "README.md", cfg, summary, env)
    write_model_card(adapter_dir / "README.md", cfg, summary, env)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _print_summary(console, summary)
    if cfg.push_to_hub:
        from kitrec_fast.artifacts.push import push_run

        push_run(run_dir, cfg.push_to_hub)
    return RunResult(run_dir, summary)


def _print_summary(console, summary: dict) -> None:
    from rich.table import Table

    table = Table(title="run summary")
    table.add_column("key", style="cyan")
    table.add_column("value")
    for key in ("recipe", "backend", "weights", "global_step", "best_eval_loss", "best_checkpoint",
                "early_stopped", "adapter_dir", "wall_seconds"):
        table.add_row(key, str(summary.get(key)))
    console.print(table)

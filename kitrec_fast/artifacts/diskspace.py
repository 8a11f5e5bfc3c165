"""What a run (or an export) will write, checked against the free space before anything is written.

A run that fills the disk hours in fails at a save; checked up front it fails in seconds, with the
numbers. Sizes come from the loaded model itself (the trainable parameters and their dtypes), so the
same code sizes a 4-bit 14B LoRA and the tiny test model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from kitrec_fast.artifacts.checkpoints import checkpoint_dirs, dir_bytes, free_bytes, gb
from kitrec_fast.errors import DiskFullError

# Tokenizer files the Trainer saves into every checkpoint and the adapter (Qwen3's tokenizer.json,
# vocab and merges are ~16 MB), plus trainer_state.json, scheduler, RNG state and training args.
SMALL_FILES = 32 * 2**20


def trained_element_size(model, param) -> int:
    """Bytes per element of a trainable parameter as training holds it: TRL's SFTTrainer casts the
    LoRA weights of a 4/8-bit base to bf16 when it is built (trl/trainer/sft_trainer.py, after the
    QLoRA paper), which is after this check runs; on a 16/32-bit base they keep their dtype."""
    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    return 2 if quantized and param.is_floating_point() else param.element_size()


def trainable_bytes(model) -> int:
    return sum(p.numel() * trained_element_size(model, p) for p in model.parameters() if p.requires_grad)


def optimizer_state_bytes(model, optim: str) -> int:
    """Optimizer state of the trainable parameters: Adam keeps two moments in each parameter's dtype
    (``torch.zeros_like``), the 8-bit variants one byte per moment; SGD and Adafactor (whose factored
    rows are smaller) are bounded by one buffer."""
    name = optim.lower()
    params = [p for p in model.parameters() if p.requires_grad]
    if "8bit" in name:
        return sum(2 * p.numel() for p in params)
    moments = 1 if ("adafactor" in name or name.startswith("sgd")) else 2
    return sum(moments * p.numel() * trained_element_size(model, p) for p in params)


@dataclass(frozen=True)
class RunEstimate:
    adapter: int          # one adapter's weights
    optimizer: int        # one checkpoint's optimizer state
    checkpoints: int      # how many checkpoints exist at once at most
    held: int             # bytes the run directory's checkpoints already take (a resumed run)
    planned: int = 0      # how many checkpoints the run writes in all

    @property
    def checkpoint(self) -> int:
        return self.adapter + self.optimizer + SMALL_FILES

    @property
    def total(self) -> int:
        return self.checkpoints * self.checkpoint + self.adapter + SMALL_FILES

    @property
    def still_needed(self) -> int:
        return max(0, self.total - self.held)

    def describe(self) -> str:
        small = f"tokenizer and trainer state up to {gb(SMALL_FILES)}"
        return (f"{self.checkpoints} checkpoint(s) of {gb(self.checkpoint)} (adapter {gb(self.adapter)} + optimizer "
                f"state {gb(self.optimizer)} + {small}) + the final adapter of {gb(self.adapter + SMALL_FILES)} "
                f"(adapter {gb(self.adapter)} + {small})")

    def fewer_checkpoints(self, limit: int) -> str:
        """How ``train.save_total_limit`` could lower the need, or ``""`` when it cannot: the Trainer
        deletes an old checkpoint only after writing the new one, so 2 exist at once at the least."""
        if self.checkpoints <= 2:
            return ""
        now = f"now {limit}" if limit and limit > 0 else "now unlimited"
        return (f"set train.save_total_limit=1 ({now}: up to {self.checkpoints} of the {self.planned} planned "
                "checkpoints exist at once; with 1, 2 do), ")


def estimate_run(model, cfg, run_dir: Path, train_rows: int) -> RunEstimate:
    t = cfg.train
    if t.max_steps and t.max_steps > 0:
        steps = t.max_steps
    else:
        per_step = max(1, t.per_device_batch_size * t.gradient_accumulation_steps * max(1, t.world_size))
        steps = math.ceil(train_rows / per_step) * math.ceil(t.epochs)
    saves = max(1, math.ceil(steps / max(1, t.save_steps)))
    limit = t.save_total_limit
    # The Trainer rotates after a new checkpoint is written: limit + 1 exist for a moment.
    at_once = min(saves, limit + 1) if limit and limit > 0 else saves
    held = sum(dir_bytes(p) for p in checkpoint_dirs(run_dir)) if Path(run_dir).is_dir() else 0
    return RunEstimate(adapter=trainable_bytes(model),
                       optimizer=optimizer_state_bytes(model, t.optim),
                       checkpoints=at_once, held=held, planned=saves)


def check_run_space(model, cfg, run_dir: Path, train_rows: int) -> RunEstimate:
    """Refuse (exit 74) a run whose checkpoints and adapter cannot fit on the disk of ``run_dir``."""
    est = estimate_run(model, cfg, run_dir, train_rows)
    free = free_bytes(run_dir)
    if est.still_needed > free:
        held = f"; {gb(est.held)} of it already there" if est.held else ""
        raise DiskFullError(
            f"not enough disk space for this run in {run_dir}: it writes about {gb(est.total)} ({est.describe()}"
            f"{held}), {gb(free)} free. Free space, {est.fewer_checkpoints(cfg.train.save_total_limit)}"
            "or use another --output-dir.")
    return est


def check_export_space(param_count: int, dtype_bytes: int, out_dir: Path) -> int:
    """Refuse an export whose merged weights cannot fit in ``out_dir``; returns the bytes needed."""
    need = param_count * dtype_bytes + SMALL_FILES
    free = free_bytes(out_dir)
    if need > free:
        raise DiskFullError(
            f"not enough disk space to export into {out_dir}: the merged model takes about {gb(need)} "
            f"({param_count / 1e9:.2f}B parameters x {dtype_bytes} bytes), {gb(free)} free. Free space or "
            "choose another output folder.")
    return need

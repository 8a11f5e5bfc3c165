"""Checkpoints that are complete or absent, and the choice of the one a rerun resumes from.

A save is written into ``RUN_DIR/.staging/checkpoint-N``, every file and the folder are synced,
and only then is it renamed to ``RUN_DIR/checkpoint-N``: a kill, a power loss or a full disk at
any instant leaves either the previous checkpoints alone or the new one whole. The staging and
set-aside folders (``.staging/``, ``broken/``) are not matched by the Trainer's ``checkpoint-*``
glob in the run directory (``transformers.trainer_utils.sort_checkpoints``), so its rotation
(``save_total_limit``) neither counts nor deletes them.

On resume the newest checkpoint is checked (files present, safetensors headers and tensor shapes
readable, optimizer, scheduler and RNG state loadable); one that fails is moved to
``broken/checkpoint-N`` (never deleted) and the next older one is tried.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from kitrec_fast import faults
from kitrec_fast.errors import DiskFullError
from kitrec_fast.fsio import fsync_dir, fsync_file, make_shareable

PREFIX = "checkpoint-"
STAGING = ".staging"
BROKEN = "broken"
TRAINER_STATE = "trainer_state.json"
_TORCH_STATES = ("optimizer.pt", "scheduler.pt")


def staging_path(run_dir: Path, name: str) -> Path:
    """Where ``name`` (``checkpoint-N``, ``adapter``) is written before it is renamed into place: in
    a subfolder, as a sibling such as ``checkpoint-N.tmp`` would match the Trainer's glob and regex."""
    return Path(run_dir) / STAGING / name


def step_of(path: Path) -> int | None:
    tail = path.name[len(PREFIX):]
    return int(tail) if path.name.startswith(PREFIX) and tail.isdigit() else None


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders of the run directory, newest first."""
    found = [p for p in Path(run_dir).glob(PREFIX + "*") if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=step_of, reverse=True)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# -- checking a checkpoint ---------------------------------------------------------------------

def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            f.get_slice(key).get_shape()


def _check_torch(path: Path) -> None:
    import torch

    # As the Trainer loads them (weights_only, numpy RNG types allowed); mmap reads the zip index
    # and pickles without pulling every tensor into memory.
    allow = []
    try:
        import numpy as np

        core = getattr(np, "_core", None) or np.core
        allow = [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    except ImportError:
        pass
    with torch.serialization.safe_globals(allow):
        torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)


def check_checkpoint(path: Path) -> str | None:
    """None for a checkpoint a resume can load, else what is wrong with it (one line)."""
    path = Path(path)
    state = path / TRAINER_STATE
    if not state.is_file():
        return f"{TRAINER_STATE} missing (the save did not finish)"
    try:
        int(json.loads(state.read_text())["global_step"])
    except (ValueError, KeyError, TypeError, OSError) as exc:
        return f"{TRAINER_STATE} unreadable ({type(exc).__name__})"
    weights = [p for p in (path / "adapter_model.safetensors", path / "model.safetensors") if p.is_file()]
    if (path / "adapter_config.json").is_file() and not weights:
        return "adapter_model.safetensors missing"
    if not weights and not list(path.glob("model-*.safetensors")):
        return "no model weights (adapter_model.safetensors) in it"
    for weight in weights + sorted(path.glob("model-*.safetensors")):
        try:
            _check_safetensors(weight)
        except Exception as exc:  # safetensors raises its own error types for every kind of damage
            return f"{weight.name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    rng = sorted(path.glob("rng_state*.pth"))
    if not rng:
        return "rng_state.pth missing"
    for name in _TORCH_STATES:
        if not (path / name).is_file():
            return f"{name} missing"
    for part in [path / n for n in _TORCH_STATES] + rng:
        try:
            _check_torch(part)
        except Exception as exc:  # torch reports a damaged zip or pickle with several error types
            return f"{part.name}: not loadable ({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})"
    return None


@dataclass
class ResumePoint:
    """The checkpoint a rerun resumes from, and the newer ones skipped on the way (path, why)."""

    checkpoint: Path | None = None
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    staging: list[Path] = field(default_factory=list)

    def notices(self) -> list[str]:
        lines = [f"skipped {p.name}: {why}; it will be moved to {BROKEN}/{p.name}" for p, why in self.skipped]
        lines += [f"an unfinished save ({STAGING}/{p.name}) of a killed attempt is removed: it never became "
                  "a checkpoint" for p in self.staging]
        return lines


def find_resume(run_dir: Path) -> ResumePoint:
    """The newest loadable checkpoint, checking newest first (reads only)."""
    run_dir = Path(run_dir)
    point = ResumePoint(staging=sorted(p for p in (run_dir / STAGING).glob("*") if p.is_dir())
                        if (run_dir / STAGING).is_dir() else [])
    for ckpt in checkpoint_dirs(run_dir):
        problem = check_checkpoint(ckpt)
        if problem is None:
            point.checkpoint = ckpt
            break
        point.skipped.append((ckpt, problem))
    return point


def set_aside(run_dir: Path, folder: Path) -> Path:
    """Move a checkpoint folder into ``broken/`` (a name that is free there), synced."""
    target_root = Path(run_dir) / BROKEN
    target_root.mkdir(exist_ok=True)
    target, n = target_root / folder.name, 1
    while target.exists():
        target, n = target_root / f"{folder.name}.{n}", n + 1
    os.rename(folder, target)
    fsync_dir(target_root)
    fsync_dir(run_dir)
    return target


def clear_for_resume(run_dir: Path, point: ResumePoint) -> list[Path]:
    """Act on :func:`find_resume`: broken checkpoints to ``broken/``, unfinished saves removed."""
    moved = [set_aside(run_dir, p) for p, _ in point.skipped if p.exists()]
    for staged in point.staging:
        shutil.rmtree(staged, ignore_errors=True)
    return moved


# -- writing a checkpoint ----------------------------------------------------------------------

def seal(staged: Path, final: Path, run_dir: Path, also_sync: tuple[Path, ...] = ()) -> None:
    """Sync every file of ``staged`` and the folder, then rename it to ``final`` and sync the parent.

    ``also_sync``: files of the run directory whose content up to now must survive a power loss
    together with this checkpoint (metrics.jsonl)."""
    make_shareable(staged)  # safetensors writes its file 0600; every file of a run is 0644
    for path in sorted(p for p in staged.rglob("*") if p.is_file()):
        faults.reached("save_file")
        fsync_file(path)
    for sub in sorted((p for p in staged.rglob("*") if p.is_dir()), reverse=True):
        fsync_dir(sub)
    fsync_dir(staged)
    if final.exists():
        set_aside(run_dir, final)  # a stale folder of that name: keep it, out of the Trainer's way
    os.rename(staged, final)
    _drop_if_empty(staged.parent)
    fsync_dir(final.parent)
    for extra in also_sync:
        if extra.is_file():
            fsync_file(extra)


def replace_dir(staged: Path, final: Path) -> None:
    """Put a fully written folder (the final adapter) in place of ``final``, synced."""
    for path in sorted(p for p in staged.rglob("*") if p.is_file()):
        fsync_file(path)
    fsync_dir(staged)
    old = None
    if final.exists():
        old = staged.parent / f"{final.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(staged, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _drop_if_empty(staged.parent)


def _drop_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty: another save is staged there
        folder.rmdir()


_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_NEARLY_FULL = 256 * 2**20


def disk_full(exc: BaseException, where: Path | None = None) -> bool:
    """Whether ``exc`` (or what caused it) is the disk running out of space.

    torch.save reports a failed write without an errno (``PytorchStreamWriter failed writing file
    ...: file write failed``): that counts when the disk of ``where`` is indeed nearly full."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _FULL:
            return True
        text = str(seen)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        if "file write failed" in text and where is not None and free_bytes(where) < _NEARLY_FULL:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def free_bytes(path: Path) -> int:
    override = faults.disk_free_override()
    if override is not None:
        return override
    path = Path(path)
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


@contextlib.contextmanager
def stop_on_full_disk(what: str, run_dir: Path, needed, partial: Path | None):
    """A write that fills the disk becomes one :class:`DiskFullError` line (exit 74): what was
    needed, what is free, which checkpoint is intact. ``partial`` (the staged folder) is removed
    first, giving back what the failed write took; ``needed`` is called only then."""
    previous = next(iter(checkpoint_dirs(run_dir)), None)
    try:
        yield
    except Exception as exc:
        if not disk_full(exc, run_dir):
            raise
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
            _drop_if_empty(partial.parent)
        kept = f"{previous.name} is intact; " if previous is not None else "no checkpoint was written yet; "
        raise DiskFullError(
            f"disk full while writing {what} in {run_dir}: needed about {gb(needed())}, "
            f"{gb(free_bytes(run_dir))} free. {kept}free space (or lower train.save_total_limit) and rerun the "
            "same command to resume.") from exc


class AtomicCheckpoints:
    """Trainer mixin: every checkpoint is staged, synced, then renamed into place (see module doc).

    ``kitrec_checkpoint_bytes`` (set by the run) is the expected size of one checkpoint, for the
    message of a save that fills the disk."""

    kitrec_checkpoint_bytes: int = 0
    _kitrec_staging = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cb = faults.callback()
        if cb is not None:
            self.add_callback(cb)
        # The dtypes training runs the trainable weights in, as the trainer was built (TRL casts the
        # LoRA weights of a quantized base to bf16 here), restored after a resume loads them.
        self._kitrec_train_dtypes = {n: p.dtype for n, p in self.model.named_parameters() if p.requires_grad}

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Load as the Trainer does, then give the trainable weights back their training dtypes.

        peft's ``load_adapter`` upcasts a bf16 adapter to fp32 (``autocast_adapter_dtype``): a
        resumed run would then train in fp32 what the uninterrupted run trains in bf16 (and build
        fp32 optimizer moments), and drift from it (measured: adapter weights 1.4e-4 apart after 2
        of 4 steps, |weights| <= 4e-4). The values are the saved bf16 ones either way."""
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        for name, param in (model if model is not None else self.model).named_parameters():
            dtype = self._kitrec_train_dtypes.get(name)
            if dtype is not None and param.dtype != dtype:
                param.data = param.data.to(dtype)

    def _get_output_dir(self, trial):
        # While staging, the Trainer's own save writes <run>/.staging/checkpoint-N (staging_path).
        out = super()._get_output_dir(trial)
        return str(staging_path(out, "")) if self._kitrec_staging else out

    def _save_checkpoint(self, model, trial):
        from transformers.trainer_utils import rotate_checkpoints

        run_dir = Path(self._get_output_dir(trial))
        name = f"{PREFIX}{self.state.global_step}"
        staged, final = staging_path(run_dir, name), run_dir / name
        previous = next(iter(checkpoint_dirs(run_dir)), None)
        needed = lambda: self.kitrec_checkpoint_bytes or (dir_bytes(previous) if previous else 0)  # noqa: E731
        with stop_on_full_disk(name, run_dir, needed, staged if self.args.should_save else None):
            self._kitrec_staging = True
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._kitrec_staging = False
            # The Trainer named the best checkpoint by where it was written; it lives at ``final``.
            best = self.state.best_model_checkpoint
            if best is not None and Path(best) == staged:
                self.state.best_model_checkpoint = str(final)
                if self.args.should_save:
                    self.state.save_to_json(str(staged / TRAINER_STATE))
            self.accelerator.wait_for_everyone()  # every rank's RNG state is in the folder
            if self.args.should_save:
                faults.reached("save")
                seal(staged, final, run_dir, also_sync=(run_dir / "metrics.jsonl",))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)

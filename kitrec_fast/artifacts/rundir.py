"""The run directory: resolved config, environment record, attempts, metrics, checkpoints lookup."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import yaml

from kitrec_fast.fsio import atomic_write_json, atomic_write_text

RESOLVED_CONFIG = "resolved_config.yaml"
ENVIRONMENT = "environment.json"
METRICS = "metrics.jsonl"
ABANDONED_METRICS = "metrics.abandoned.jsonl"
ATTEMPTS = "attempts.json"
SUMMARY = "summary.json"
ADAPTER_DIR = "adapter"
PLOT = "loss_curves.png"
LOG = "train.log"
LOCK = ".train.lock"  # held while a process writes the directory (kitrec_fast/dirlock.py)

# Settings a resume may change: where and how often things are written or shown, and how the
# effective batch is split into micro-batches and data-parallel processes (checked separately: the
# product must not change),
# memory knobs that leave the computed numbers alone, and the base evaluation serves the adapter on
# (model.eval_base). Every other setting decides what is trained and must match the run directory.
FREE_ON_RESUME = frozenset({
    "output_dir", "push_to_hub", "smoke", "report_to", "trackers",
    "train.logging_steps", "train.eval_steps", "train.save_steps", "train.save_total_limit",
    "train.per_device_batch_size", "train.gradient_accumulation_steps", "train.world_size",
    "train.gradient_checkpointing", "train.loss_chunk_size", "train.report_to", "train.trackers",
    "model.eval_base",
})

# Settings a checkpoint is made of, which therefore no resume can change, with
# --accept-config-change or without: the adapter's tensors (their rank and the modules that carry
# them), the base weights those tensors were trained on top of (model, revision, which weights,
# quantization), and the optimizer whose state is saved. A change would fail to load, or load the
# adapter onto other weights than it was trained for.
NOT_HELD_BY_CHECKPOINT = frozenset({
    "lora.r", "lora.target_modules", "model.name", "model.revision", "model.weights", "model.load_in_4bit",
    "model.quant_type", "model.double_quant", "train.optim",
})
# Optimizer names that save the same state (torch AdamW, fused kernel or not).
_OPTIMIZER_STATE = {"adamw_torch": "torch-adamw", "adamw_torch_fused": "torch-adamw"}


def changes_no_checkpoint_holds(relevant: dict) -> dict:
    """The part of ``relevant`` (from ``config_changes``) that a resume cannot accept."""
    out = {}
    for key, (old, new) in relevant.items():
        if key == "lora.target_modules" and sorted(old or []) == sorted(new or []):
            continue
        if key == "train.optim" and _OPTIMIZER_STATE.get(old, old) == _OPTIMIZER_STATE.get(new, new):
            continue
        if key in NOT_HELD_BY_CHECKPOINT:
            out[key] = (old, new)
    return out


def write_resolved_config(run_dir: Path, cfg, command: str) -> Path:
    """The fully resolved recipe, starting with the command that produced it (so it can be rerun)."""
    path = Path(run_dir) / RESOLVED_CONFIG
    body = yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)
    atomic_write_text(path, f"# {command}\n# Resolved configuration of this run (recipe + overrides).\n{body}")
    return path


def read_resolved_config(run_dir: Path):
    from kitrec_fast.config import config_from_dict

    return config_from_dict(yaml.safe_load((Path(run_dir) / RESOLVED_CONFIG).read_text()))


def read_resolved_raw(run_dir: Path) -> dict | None:
    """The stored resolved config as plain data (None without one); read raw so that an option
    since removed from the code does not make an old run directory unreadable."""
    path = Path(run_dir) / RESOLVED_CONFIG
    if not path.is_file():
        return None
    raw = yaml.safe_load(path.read_text())
    return raw if isinstance(raw, dict) else None


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(stored: dict, cfg) -> tuple[dict, dict]:
    """``(relevant, free)``: ``{key: (stored value, new value)}`` for every setting that differs.

    A key the stored run lacks (added to the code since) counts as its default; a key only the
    stored run has (removed since) is ignored. The effective batch is compared as one number.
    """
    from kitrec_fast.config import RunConfig

    new = _flatten(cfg.to_dict())
    old = {**_flatten(RunConfig().to_dict()), **_flatten(stored)}
    old_train, new_train = stored.get("train") or {}, cfg.train
    old_batch = (old_train.get("per_device_batch_size", new_train.per_device_batch_size)
                 * old_train.get("gradient_accumulation_steps", new_train.gradient_accumulation_steps)
                 * old_train.get("world_size", 1))  # runs recorded before data parallelism had one process
    old["train.effective_batch_size"], new["train.effective_batch_size"] = old_batch, new_train.effective_batch_size
    relevant, free = {}, {}
    for key, value in new.items():
        if key in old and old[key] != value:
            (free if key in FREE_ON_RESUME else relevant)[key] = (old[key], value)
    return relevant, free


def describe_changes(changes: dict) -> str:
    return "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in
                     ((k, *v) for k, v in sorted(changes.items())))


def read_attempts(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / ATTEMPTS
    return json.loads(path.read_text()) if path.is_file() else []


def write_attempts(run_dir: Path, attempts: list[dict]) -> None:
    atomic_write_json(Path(run_dir) / ATTEMPTS, attempts)


def _split_rows(text: str, name: str) -> tuple[list[dict], str | None]:
    """Rows of an appended JSONL file, and its torn last line (None when there is none).

    Rows are appended whole, one write each, so a kill can only cut the last line short (it then
    lacks its newline, or does not parse). Damage before the last line is not a kill's doing."""
    lines = text.split("\n")
    rows, torn = [], None
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        last = i == len(lines) - 1 or (i == len(lines) - 2 and not lines[-1].strip())
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError:
            if not last:
                from kitrec_fast.errors import UserError

                raise UserError(f"{name}: line {i + 1} is damaged (not one JSON object); it was edited or "
                                "written by two processes. Remove that line and rerun.") from None
            torn = line
            continue
        rows.append(row)  # a whole row whose newline never made it is kept (as predictions.jsonl does)
    return rows, torn


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return _split_rows(path.read_text(errors="replace"), str(path))[0]


def drop_torn_metrics(run_dir: Path) -> str | None:
    """Cut a torn last line (a kill in the middle of an append) off ``metrics.jsonl``, so the next
    attempt's rows start on a line of their own; returns a notice, or None when the file was whole."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return None
    text = path.read_text(errors="replace")
    rows, torn = _split_rows(text, str(path))
    if torn is None and (not text or text.endswith("\n")):
        return None
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    if torn is None:
        return None  # only the newline of a whole row was missing
    shown = torn if len(torn) <= 60 else torn[:57] + "..."
    return (f"{METRICS}: dropped its torn last line ({len(torn)} bytes, {shown!r}), written when an attempt "
            "was killed mid-write; that step is logged again by the resumed run")


def retire_abandoned_metrics(run_dir: Path, resume_step: int, previous_attempt: int) -> int:
    """Move rows logged after ``resume_step`` (and earlier attempts' end-of-training rows) from
    ``metrics.jsonl`` to ``metrics.abandoned.jsonl``, so the main file reads as one clean run.

    Rows carry the attempt that logged them; older rows without one are tagged ``previous_attempt``.
    Returns the number of rows moved.
    """
    run_dir = Path(run_dir)
    rows = _rows(run_dir / METRICS)
    keep, moved = [], []
    for row in rows:
        row.setdefault("attempt", previous_attempt)
        (moved if row.get("step", 0) > resume_step or "train_runtime" in row else keep).append(row)
    if not moved:
        return 0
    old = (run_dir / ABANDONED_METRICS).read_text() if (run_dir / ABANDONED_METRICS).is_file() else ""
    atomic_write_text(run_dir / ABANDONED_METRICS, old + "".join(json.dumps(r) + "\n" for r in moved))
    atomic_write_text(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in keep))
    return len(moved)


def mark_killed_attempts(run_dir: Path, attempts: list[dict], holder: dict | None = None) -> list[dict]:
    """Attempts still ``running`` when a new one starts were killed (SIGKILL, the OOM killer, a lost
    node): no handler ran to record their end. Each becomes ``killed``, with ``last_seen_alive``
    (epoch seconds): its last heartbeat on the run directory's lock file (``holder``, the record the
    dead process left there) or its last metrics row, whichever is later. Returns those attempts."""
    lost = [a for a in attempts if a.get("outcome") == "running"]
    for attempt in lost:
        n = attempt.get("attempt")
        seen = [r["time"] for name in (METRICS, ABANDONED_METRICS) for r in _rows(Path(run_dir) / name)
                if r.get("attempt") == n and "time" in r]
        later = [a.get("started_at", 0.0) for a in attempts if a.get("started_at", 0.0) > attempt.get("started_at", 0.0)]
        if holder and attempt.get("started_at", 0.0) <= holder.get("started", 0.0) < min(later, default=float("inf")):
            seen.append(holder["last_seen"])  # the lock was taken by this attempt's process
        started = attempt.get("started_at", 0.0)
        attempt["outcome"] = "killed"
        attempt["last_seen_alive"] = max(seen, default=started)
        attempt["wall_seconds"] = round(max(0.0, attempt["last_seen_alive"] - started), 1)
    return lost


def attempt_seconds(run_dir: Path, attempt: dict) -> float:
    """Wall time of one attempt: as recorded at its end, or (for an attempt that was killed) up to
    the last metrics row it logged."""
    if attempt.get("wall_seconds") is not None:
        return float(attempt["wall_seconds"])
    n = attempt.get("attempt")
    times = [r["time"] for name in (METRICS, ABANDONED_METRICS) for r in _rows(Path(run_dir) / name)
             if r.get("attempt") == n and "time" in r]
    return max(0.0, max(times, default=attempt.get("started_at", 0.0)) - attempt.get("started_at", 0.0))


def total_wall_seconds(run_dir: Path, attempts: list[dict]) -> float:
    return round(sum(attempt_seconds(run_dir, a) for a in attempts), 1)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment_record(extra: dict | None = None) -> dict:
    """Versions, hardware and code revision: enough to tell two runs' setups apart."""
    import importlib.metadata as md

    import torch

    versions = {}
    for pkg in ("kitrec_fast", "torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate",
                "unsloth", "unsloth_zoo", "triton", "xformers"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
               "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
               "count": torch.cuda.device_count()}
    return {"python": sys.version.split()[0], "platform": platform.platform(), "versions": versions,
            "gpu": gpu, "git_commit": git_commit(), **(extra or {})}


def write_environment(run_dir: Path, extra: dict | None = None) -> Path:
    path = Path(run_dir) / ENVIRONMENT
    atomic_write_json(path, environment_record(extra))
    return path


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest ``checkpoint-N`` with a trainer state (quick; the resume itself checks every file
    with :func:`kitrec_fast.artifacts.checkpoints.find_resume`)."""
    from kitrec_fast.artifacts.checkpoints import checkpoint_dirs

    return next((p for p in checkpoint_dirs(run_dir) if (p / "trainer_state.json").is_file()), None)


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of ``metrics.jsonl`` (a torn last line of a killed attempt is left out)."""
    return _rows(Path(run_dir) / METRICS)

"""The run directory: resolved config, environment record, checkpoints lookup."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import yaml

RESOLVED_CONFIG = "resolved_config.yaml"
ENVIRONMENT = "environment.json"
METRICS = "metrics.jsonl"
ADAPTER_DIR = "adapter"


def write_resolved_config(run_dir: Path, cfg, command: str) -> Path:
    """The fully resolved recipe, starting with the command that produced it (so it can be rerun)."""
    path = Path(run_dir) / RESOLVED_CONFIG
    body = yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)
    path.write_text(f"# {command}\n# Resolved configuration of this run (recipe + overrides).\n{body}")
    return path


def read_resolved_config(run_dir: Path):
    from kitrec_fast.config import config_from_dict

    return config_from_dict(yaml.safe_load((Path(run_dir) / RESOLVED_CONFIG).read_text()))


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
    path.write_text(json.dumps(environment_record(extra), indent=2, default=str))
    return path


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest ``checkpoint-N`` with a trainer state (the one a rerun resumes from)."""
    ckpts = [p for p in Path(run_dir).glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    ckpts = [p for p in ckpts if p.name.split("-")[-1].isdigit()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1]), default=None)


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

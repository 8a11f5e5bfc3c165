"""GPU checks (skipped without CUDA): a few real steps per backend with the fused kernels active.

Run on a GPU machine with ``bash tests/gpu/run_gpu_checks.sh`` (installs carried wheels, then runs
this module); each backend trains in its own process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ROOT = Path(__file__).resolve().parents[2]
# The smoke configuration (tiny Qwen3, embedded data) at the recipe's 5,120-token budget.
MODEL_ARGS = ["data.max_length=5120", "train.max_steps=4", "train.gradient_accumulation_steps=1",
              "train.eval_steps=2", "train.save_steps=2", "data.limit=24"]


def _run(backend: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "kitrec_fast.recipes.dualft_music", "--smoke", "--backend", backend,
           "--output-dir", str(out), *MODEL_ARGS]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    env = json.loads((out / "environment.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return {"env": env, "summary": summary, "rows": rows}


@pytest.mark.gpu
def test_unsloth_trains_with_fused_lora_kernels(tmp_path):
    res = _run("unsloth", tmp_path / "unsloth")
    env = res["env"]
    # QKV, O and MLP of every layer run Unsloth's fused LoRA autograd kernels.
    assert env["fused_lora_modules"] == 3 * env["num_layers"], env
    assert env["gpu"] is not None and env["compute_dtype"] in ("bfloat16", "float16")
    losses = [r["loss"] for r in res["rows"] if "loss" in r]
    assert len(losses) == 4 and all(l == l for l in losses)
    assert any("peak_mem_allocated_mib" in r for r in res["rows"])


@pytest.mark.gpu
def test_peft_baseline_trains_on_gpu(tmp_path):
    res = _run("peft", tmp_path / "peft")
    assert res["env"]["fused_lora_modules"] is None
    assert res["summary"]["global_step"] == 4

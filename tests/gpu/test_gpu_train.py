"""GPU checks (skipped without CUDA): a few real steps per backend with the fused kernels active.

Run on a GPU machine with ``bash tests/gpu/run_gpu_checks.sh`` (installs carried wheels, then runs
this module) or as part of ``benchmarks/gpu/run_all.sh``; each backend trains in its own process.
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
# The smoke configuration (tiny Qwen3, embedded data) at the recipe's 5,120-token budget, with the
# recipe's LoRA dropout (0.08: fused by this Unsloth, see the README).
MODEL_ARGS = ["data.max_length=5120", "train.max_steps=3", "train.gradient_accumulation_steps=1",
              "train.eval_steps=3", "train.save_steps=3", "data.limit=12"]
# One step observed from inside compute_loss: a short budget, so fewer candidates (the smoke rows need
# ~2,500 tokens with 20). tests/test_gpu_plan.py prepares the data of both on CPU, so a row these
# settings cannot hold fails there, not on a GPU lease.
PROBE_ARGS = ["data.limit=4", "data.max_length=2048", "data.max_candidates=10", "data.min_candidates=3"]


def _run(backend: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "kitrec_fast.recipes.dualft_music", "--smoke", "--backend", backend,
           "--output-dir", str(out), *MODEL_ARGS]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    env = json.loads((out / "environment.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return {"env": env, "summary": summary, "rows": rows}


def _probe(backend: str) -> dict:
    """One recipe step (4-bit, the trainer's bf16) observed from inside compute_loss."""
    cmd = [sys.executable, str(ROOT / "tests/scripts/autocast_probe.py"), backend, "--gpu", *PROBE_ARGS]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.gpu
def test_unsloth_trains_with_fused_lora_kernels(tmp_path):
    res = _run("unsloth", tmp_path / "unsloth")
    env = res["env"]
    n = env["num_layers"]
    # QKV, O and MLP of every layer run Unsloth's fused LoRA kernels (3 per layer), with the
    # recipe's dropout 0.08; Unsloth's own module count sees attention once and the MLP once.
    assert env["fused_lora_kernels"] == 3 * n, env
    assert env["fused_lora_modules"] == 2 * n, env
    assert env["gpu"] is not None and env["compute_dtype"] in ("bfloat16", "float16")
    losses = [r["loss"] for r in res["rows"] if "loss" in r]
    assert len(losses) == 3 and all(l == l for l in losses)
    assert any("peak_mem_allocated_mib" in r for r in res["rows"])


@pytest.mark.gpu
def test_peft_baseline_trains_on_gpu(tmp_path):
    res = _run("peft", tmp_path / "peft")
    assert res["env"]["fused_lora_kernels"] is None and res["env"]["fused_lora_modules"] is None
    assert res["summary"]["global_step"] == 3


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["unsloth", "peft"])
def test_training_step_runs_in_bf16_under_autocast(backend):
    out = _probe(backend)
    facts = out["facts"]
    print(json.dumps(out))
    assert out["lora_dropout"] > 0 and out["steps"] == 1 and out["loss_path"] == "chunked"
    assert out["layer_autocast"] and all(out["layer_autocast"]), out
    assert facts["autocast"] is True and facts["activation_dtype"] in ("bfloat16", "float16"), facts
    if backend == "peft":
        # the baseline's LoRA matmuls run in the autocast dtype, not in fp32
        assert out["lora_out"] and set(out["lora_out"]) <= {"bfloat16", "float16"}, out
    else:
        assert facts["fused_lora_kernels"] == 3 * out["num_layers"], facts
        assert facts["attn_implementation"], facts

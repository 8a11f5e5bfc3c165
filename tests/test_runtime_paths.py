"""What the training step really runs on: autocast through the prepared model, fused-kernel counts.

Each check runs in its own process: importing unsloth patches the process, and the peft baseline
refuses to run in a patched one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAST = ["data.limit=4", "data.max_length=2048", "data.max_candidates=10", "data.min_candidates=3"]


def _script(name: str, *args: str, env: dict | None = None, timeout: int = 600) -> dict:
    cmd = [sys.executable, str(ROOT / "tests/scripts" / name), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["peft", "unsloth"])
def test_compute_loss_runs_under_the_trainers_autocast(backend):
    # fp32 weights, use_cpu + bf16: accelerate's autocast wraps only the prepared model's forward.
    # A loss that calls the inner decoder directly runs it in fp32 (LoRA outputs float32).
    out = _script("autocast_probe.py", backend, *FAST)
    if not out["bf16"]:
        pytest.skip("this CPU has no bf16 support (Unsloth's CPU backend turned bf16 off)")
    assert out["steps"] == 1 and out["loss_path"] == "chunked" and len(out["losses"]) == 1
    assert out["lora_weight"] == "float32"  # so bf16 outputs can only come from autocast
    assert out["in_compute_loss"] and all(out["in_compute_loss"])
    assert out["layer_autocast"] and all(out["layer_autocast"]), out
    assert out["lora_out"] and set(out["lora_out"]) == {"bfloat16"}, out
    facts = out["facts"]
    assert facts["autocast"] is True and facts["activation_dtype"] == "bfloat16"
    assert facts["world_size"] == 1 and facts["attn_implementation"]
    # CPU: nothing is fused (Unsloth's CPU backend is stock transformers + PEFT)
    assert facts["fused_lora_kernels"] == (0 if backend == "unsloth" else None)


@pytest.mark.slow
def test_fused_lora_kernel_counter_matches_unsloths_own_patching():
    out = _script("fused_kernels.py", env={"UNSLOTH_ALLOW_CPU": "1"})
    assert out["fused_lora_dropout"] is True  # this Unsloth fuses LoRA dropout (UNSLOTH_FUSED_LORA_DROPOUT)
    full3, full2, attn_only, fp32 = out["cases"]
    # every target module, dropout 0.08 / 0.15 (the recipes'): QKV + O + MLP = 3 kernels per layer,
    # while Unsloth's module count sees the attention module once and the MLP once (2 per layer)
    assert full3["kernels"] == {"qkv": 3, "o": 3, "mlp": 3, "total": 9} and full3["modules"] == 6
    assert full2["kernels"] == {"qkv": 2, "o": 2, "mlp": 2, "total": 6} and full2["modules"] == 4
    # LoRA on attention only: 2 kernels per layer in 1 module per layer
    assert attn_only["kernels"] == {"qkv": 2, "o": 2, "mlp": 0, "total": 4} and attn_only["modules"] == 2
    # fp32 base weights: Unsloth falls back to PEFT's forwards everywhere
    assert fp32["kernels"]["total"] == 0 and fp32["modules"] == 0
    assert full2["facts"]["fused_lora_kernels"] == 6 and full2["facts"]["fused_lora_modules"] == 4


@pytest.mark.slow
def test_data_parallel_gradients_equal_the_whole_batch_gradient():
    # torchrun, 2 CPU ranks (gloo), one row each: after DDP's gradient averaging the LoRA gradients
    # must be those of the two-row batch's mean loss. Without the Trainer's x world_size (which a
    # compute_loss override must apply itself) they come out half as large.
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 400),
           str(ROOT / "tests/scripts/ddp_grad.py"), *FAST]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["world_size"] == 2 and out["ddp"] == "DistributedDataParallel" and out["loss_path"] == "chunked"
    assert out["params"] > 0 and out["n_items"] > 0
    assert out["grad_ratio"] == pytest.approx(1.0, rel=1e-4)
    assert out["max_rel_grad_diff"] < 1e-4

"""What the training step really runs on: fused-kernel counts, data-parallel gradients (autocast through the
prepared model: tests/test_train.py, beside the other trainer-level checks).

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

"""``kitrec-fast doctor`` on CPU: every check runs or says why it could not, and the backends'
tiny trainings agree (each in its own process; this process never imports unsloth)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU_ONLY = ("CUDA", "bitsandbytes library", "triton kernels", "fused LoRA kernels", "memory vs profile")


@pytest.mark.slow
def test_doctor_on_cpu_trains_both_backends_and_names_what_it_could_not_run():
    # a generous limit per backend process: CI's 2 cores are shared by the whole suite
    proc = subprocess.run([sys.executable, "-m", "kitrec_fast", "doctor", "--json", "--timeout-s", "600"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    checks = {c["name"]: c for c in report["checks"]}
    for name in GPU_ONLY:  # never claimed on a machine without a GPU
        assert checks[name]["status"] == "not run" and "needs a CUDA GPU" in checks[name]["detail"], checks[name]
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes", "unsloth", "unsloth importable",
                 "tiny training: fast path", "tiny training: baseline", "loss gap"):
        assert checks[name]["status"] == "ok", checks[name]
    gap = checks["loss gap"]["data"]
    losses = gap["losses"]
    assert len(losses["unsloth"]) == len(losses["peft"]) == 3
    # LoRA B = 0 at the first step: both backends compute the same model on the same rows (fp32 on CPU)
    assert gap["first_step"] < 1e-5, gap
    assert "unsloth imported in this process" not in checks["tiny training: baseline"]["detail"]

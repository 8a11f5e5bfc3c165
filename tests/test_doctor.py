"""``kitrec-fast doctor`` on CPU: every check runs or says why it could not, and the backends'
tiny trainings agree (each in its own process; this process never imports unsloth)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU_ONLY = ("CUDA", "bitsandbytes library", "triton kernels", "memory vs profile")
FUSED = ("qkv", "o", "mlp", "rms_norm")


def _doctor(*args: str) -> tuple[subprocess.CompletedProcess, dict]:
    # a generous limit per child process: CI's 2 cores are shared by the whole suite
    proc = subprocess.run([sys.executable, "-m", "kitrec_fast", "doctor", "--json", "--timeout-s", "600", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    return proc, json.loads(proc.stdout[proc.stdout.index("{"):]) if "{" in proc.stdout else {}


def _assert_fused_kernels_ran_on_cpu(check: dict) -> None:
    # Unsloth's fused functions through Triton's interpreter in fp32, every one within 1e-5 of PEFT
    data = check["data"]
    assert check["status"] == "ok" and data["interpreter"] and data["dtype"] == "float32", check
    assert set(data["worst"]) == set(FUSED) and max(data["worst"].values()) <= 1e-5, data["worst"]


@pytest.mark.slow
def test_doctor_on_cpu_trains_both_backends_and_names_what_it_could_not_run():
    proc, report = _doctor()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    checks = {c["name"]: c for c in report["checks"]}
    _assert_fused_kernels_ran_on_cpu(checks["fused_kernels"])
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


# `doctor --only fused_kernels --json` alone: tests/test_gpu_plan.py's CPU dry run runs it as its kernels step.


def test_doctor_only_names_the_checks_it_knows():
    proc = subprocess.run([sys.executable, "-m", "kitrec_fast", "doctor", "--only", "fused"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error:" in proc.stderr and "--only" in proc.stderr and "fused_kernels" in proc.stderr, proc.stderr

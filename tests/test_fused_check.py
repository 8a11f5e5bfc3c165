"""Unsloth's fused LoRA functions against PEFT on CPU, through Triton's interpreter.

One child process (``tests/scripts/fused_check_cases.py``, under ``UNSLOTH_ALLOW_CPU=1
TRITON_INTERPRET=1``) runs every case once; the tests below read its report. Where Unsloth's code
cannot run on CPU tensors (each place named in ``kitrec_fast/backends/fused_check.py``), something
else runs in its place:
- ``FastLanguageModel.from_pretrained`` asks for the card's properties (unsloth/models/llama.py:3561
  -> unsloth/device_type.py:611) and ``FastQwen3Model.pre_patch``'s RoPE module asks for the current
  CUDA device (llama.py:2615; its cache is per CUDA device): the stock model forward runs Unsloth's
  decoder layer and Qwen3 attention bound to each layer, with the position embeddings handed in.
- with position ids Unsloth's RoPE kernel asks ``torch.cuda.current_device()``
  (unsloth/kernels/rope_embedding.py:414): they stay unset (row i is token i's position anyway).
- 4-bit without LoRA dropout asks for the dequantization scratch, whose check calls
  ``torch.cuda.is_current_stream_capturing()`` (unsloth/kernels/utils.py:943 -> :641): 4-bit runs at
  a recipe's dropout, the route without the scratch; bf16/fp16 4-bit stops at bitsandbytes stubs
  (unsloth/kernels/utils.py:303-309, a misleading "bitsandbytes not installed"), so 4-bit is fp32.
- ``fast_cross_entropy_loss`` stops under the interpreter: the loss is transformers'.
- the fused Q/K-norm + RoPE kernel is CUDA-only (unsloth/kernels/qk_norm_rope.py:436): Unsloth's own
  fallback, fast_rms_layernorm + fast_rope_embedding, runs (interpreted).
- bf16 under the interpreter: the SwiGLU and RMSNorm kernels give NaN/inf (numpy has no bf16), so bf16
  (through ``patch_peft_model``, which installs nothing on fp32 bases) is checked for QKV and O only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kitrec_fast.backends import fused_check

ROOT = Path(__file__).resolve().parents[1]
TOL = fused_check.FP32_TOL
LORA_KEYS = {name: {f"{p}.{ab}" for p in projs for ab in "AB"} for name, projs in fused_check.PROJS.items()}


@pytest.fixture(scope="module")
def cases() -> dict:
    proc = subprocess.run([sys.executable, "tests/scripts/fused_check_cases.py"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env={**os.environ, **fused_check.INTERPRETER_ENV})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])


def _assert_equal_to_peft(report: dict, names) -> None:
    assert report["tolerance"] == {"kind": "abs", "value": TOL}
    for name in names:
        r = report["functions"][name]
        # every LoRA weight of the function is compared (a dropped adapter cannot hide)
        assert set(r["max_abs"]) == {"out", "dX"} | LORA_KEYS[name], (name, r)
        assert r["ok"] and max(r["max_abs"].values()) <= TOL, (name, r["max_abs"])


@pytest.mark.slow
def test_fused_functions_equal_peft_in_fp32(cases):
    layer = cases["layer"]
    assert cases["interpreter"] and layer["dtype"] == "float32" and layer["dropout"] == 0
    _assert_equal_to_peft(layer, ("qkv", "o", "mlp", "rms_norm"))


@pytest.mark.slow
@pytest.mark.parametrize("p", fused_check.RECIPE_DROPOUTS)
def test_fused_dropout_equals_peft_with_the_same_masks(cases, p):
    _assert_equal_to_peft(cases["dropout"][str(p)], ("qkv", "o", "mlp"))
    # the same comparison with dropout's 1 / (1 - p) planted away in Unsloth's dropout is caught
    planted = cases["plants"][f"no_dropout_scale_{p}"]
    for name in ("qkv", "o", "mlp"):
        assert not planted["functions"][name]["ok"] and planted["functions"][name]["worst"] > 100 * TOL


@pytest.mark.slow
def test_fused_functions_on_nf4_double_quant_bases_equal_peft(cases):
    report = cases["four_bit"]
    assert report["base"] == {"class": "Linear4bit", "quant_type": "nf4", "double_quant": True}
    _assert_equal_to_peft(report, ("qkv", "o", "mlp"))


@pytest.mark.slow
def test_unsloths_own_patching_installs_the_functions_that_match_peft_in_bf16(cases):
    # patch_peft_model installs nothing on fp32 bases; on bf16 ones it installs all three (the GPU's
    # route), and the installed QKV and O equal PEFT within bf16's rounding (see fused_check.tolerance)
    report = cases["patched"]
    assert report["kernels"] == {"qkv": 1, "o": 1, "mlp": 1, "total": 3}
    assert report["tolerance"]["kind"] == "rel" and report["ok"], report["functions"]
    assert set(report["functions"]) == {"qkv", "o"}
    for name, r in report["functions"].items():
        assert set(r["max_abs"]) == {"out", "dX"} | LORA_KEYS[name], (name, r)


@pytest.mark.slow
@pytest.mark.parametrize("plant, names", [("alpha_not_alpha_over_r", ("qkv", "o", "mlp")),
                                          ("dropped_kv_adapters", ("qkv",)), ("transposed_lora", ("o",))])
def test_planted_bugs_in_the_fused_functions_are_caught(cases, plant, names):
    report = cases["plants"][plant]
    assert not report["ok"]
    for name in names:
        assert report["functions"][name]["worst"] > 100 * TOL, (name, report["functions"][name])


@pytest.mark.slow
def test_a_whole_step_through_unsloths_layers_matches_the_baseline_gradients(cases):
    fast = cases["whole_step"]
    assert fast["attention_forward"] == "Qwen3Attention_fast_forward"
    base = fused_check.whole_step(fast=False)  # this process: stock transformers + PEFT, no unsloth
    agree = fused_check.gradient_agreement(base["grads"], fast["grads"])
    # every LoRA A and B of the layer (7 projections) has a gradient on both sides
    assert agree["tensors"] == 2 * len(fused_check.TARGETS)
    # the GPU parity tolerances, and fp32's far tighter agreement
    assert agree["cosine"] >= 0.99 and agree["norm_gap"] <= 0.05, agree
    assert agree["max_abs"] <= TOL and abs(fast["loss"] - base["loss"]) <= TOL, (agree, fast["loss"], base["loss"])


@pytest.mark.slow
def test_fused_lora_kernel_counter_matches_unsloths_own_patching(cases):
    out = cases["counters"]  # Unsloth's patch_peft_model on tiny bf16 models: only which forwards it installs
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

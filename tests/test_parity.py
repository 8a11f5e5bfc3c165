"""The backend parity check can fail: planted numerics bugs break its verdict at the GPU tolerances.

The baseline trains one step in this process (tiny Qwen3, CPU, fp32) through the benchmark worker's
own path, from the parity check's saved adapter, and saves its first-step LoRA gradients; a second
run with one bug planted on its side is compared with ``parity.compare_grads`` at the very
tolerances the GPU run uses. (The fast path against the baseline, which must pass, runs in the CPU
dry run of the GPU plan: tests/test_gpu_plan.py.) Also here: the chunked loss computes no LM head
inside the forward (the memory the baseline would otherwise spend on it).
"""

from __future__ import annotations

import sys
from argparse import Namespace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.gpu import parity  # noqa: E402
from benchmarks.training import worker  # noqa: E402

TINY = "testkit:tiny-qwen3"
ARGS = Namespace(model=TINY, recipe="dualft_music_seta", batch_size=2, seq_len=128, steps=1, seed=42,
                 trained_fraction=0.12)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    return parity.make_adapter(TINY, tmp_path_factory.mktemp("parity") / "init_adapter", ARGS.recipe, ARGS.seed)


def first_step(adapter: Path, out: Path, overrides: dict | None = None, plant=None) -> tuple[dict, dict]:
    """One baseline step through the worker (as the parity run does); ``plant(loaded)`` runs on the
    loaded model right after the shared adapter went in. Returns (row, first-step gradients)."""
    import torch

    from kitrec_fast.backends import get_backend

    out.mkdir(parents=True)
    spec = parity.parity_spec("peft", ARGS, adapter, out, overrides)
    real = worker.load_initial_adapter

    def load_then_plant(loaded, adapter_dir):
        real(loaded, adapter_dir)
        if plant is not None:
            plant(loaded)

    worker.load_initial_adapter = load_then_plant
    try:
        row: dict = {}
        worker._run_throughput(spec, worker.make_run_config(spec), get_backend("peft"), torch, row)
    finally:
        worker.load_initial_adapter = real
    return row, parity.load_grads(Path(spec["save_grads"]))


def _skip_adapter_of_layer(index: int):
    def plant(loaded):
        hit = 0
        for name, module in loaded.model.named_modules():
            if f"layers.{index}." in name and hasattr(module, "lora_A") and hasattr(module, "_disable_adapters"):
                module._disable_adapters = True  # peft's switch: this layer's forward skips its adapter
                hit += 1
        assert hit == 7  # q k v o gate up down

    return plant


@pytest.fixture(scope="module")
def reference(adapter, tmp_path_factory) -> dict:
    """The unplanted baseline step, with a counter on the real LM head's forward."""
    from kitrec_fast.train.trainer import _causal_lm

    seen: dict = {"head_calls": 0}

    def count_head_calls(loaded):
        seen["loaded"], seen["head"] = loaded, _causal_lm(loaded.model).lm_head
        seen["head"].register_forward_hook(lambda *a: seen.__setitem__("head_calls", seen["head_calls"] + 1))

    row, grads = first_step(adapter, tmp_path_factory.mktemp("ref") / "run", plant=count_head_calls)
    return {"row": row, "grads": grads, **seen}


def test_chunked_loss_runs_no_lm_head_in_the_forward(reference):
    from kitrec_fast.train.trainer import _causal_lm

    row = reference["row"]
    assert row["status"] == "ok" and row["losses"] and all(x == x for x in row["losses"])
    assert row["settings"]["loss"] == "chunked"
    # the loss multiplied by the head's weight itself (non-zero gradients); the forward never ran the head
    assert all(float(g.norm()) > 0 for g in reference["grads"].values())
    assert reference["head_calls"] == 0
    assert _causal_lm(reference["loaded"].model).lm_head is reference["head"]  # the real head is back


@pytest.mark.slow
def test_parity_verdict_fails_for_planted_numerics_bugs(adapter, reference, tmp_path):
    ref = reference["grads"]
    assert reference["row"]["grads"]["tensors"] == len(ref) == 2 * 7 * 2  # A and B x 7 projections x 2 layers
    assert all(float(g.norm()) > 0 for g in ref.values())  # B != 0: A gets a gradient from the first step
    bugs = {
        # alpha/r = 1 instead of the recipe's 64/32 = 2 on one side
        "scaling": dict(overrides={"lora.alpha": "32"}),
        # the recipes' dropout (0.08) left on in one backend
        "dropout": dict(overrides={"lora.dropout": "0.08"}),
        # one layer's adapter not applied
        "layer": dict(plant=_skip_adapter_of_layer(1)),
    }
    verdicts = {}
    for bug, kw in bugs.items():
        row, grads = first_step(adapter, tmp_path / bug, **kw)
        assert row["status"] == "ok"
        verdicts[bug] = parity.compare_grads(ref, grads)
    for bug, v in verdicts.items():
        assert not v["ok"], (bug, v["worst_cosine"], v["worst_rel_norm_gap"])
    assert verdicts["scaling"]["worst_rel_norm_gap"] > 0.3
    assert verdicts["dropout"]["worst_cosine"] < parity.COS_MIN
    # the skipped layer has no gradient at all (and the other layer's gradients move too)
    skipped = [n for n in ref if n.startswith("layers.1.")]
    assert set(skipped) <= set(verdicts["layer"]["failing"])
    assert all(verdicts["layer"]["per_tensor"][n].get("missing") == "b" for n in skipped)
    # the same comparison of the reference with itself passes: the verdict is not "always fail"
    assert parity.compare_grads(ref, dict(ref))["ok"]

"""The trainer class a GPU run trains with, trained on CPU against the one a CPU run uses.

On a GPU, importing unsloth replaces ``trl.SFTTrainer`` with the ``UnslothSFTTrainer`` it
generates, and ``KitrecSFTTrainer`` subclasses that; a CPU run subclasses unsloth_zoo's CPU
subclass of TRL's own. ``tests/scripts/trainer_class.py`` trains the smoke recipe on each (one
process per kind, same model loader, fp32 everywhere) with what the generated class rewrites in
play: gradient accumulation (``num_items_in_batch``), NEFTune and LoRA dropout under one seed, an
evaluation, checkpoint saves, a resume and the adapter export. (The data-parallel test's unsloth
case, tests/test_ddp.py, still runs on the CPU run's trainer: its ranks on the generated class
would be a third set of Unsloth processes.)
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

# fp32 base (no 4-bit): TRL casts a quantized base's LoRA weights to bf16 and the generated class
# does not (checked below on its own), which would put bf16 rounding into the comparison.
ARGS = ["data.limit=12", "data.val_fraction=0.25", "data.max_length=2048", "data.max_candidates=3",
        "data.min_candidates=3", "model.load_in_4bit=false", "train.per_device_batch_size=1",
        "train.gradient_accumulation_steps=2", "train.max_steps=4", "train.eval_steps=2", "train.save_steps=2",
        "train.logging_steps=1", "train.max_grad_norm=1e9"]
GENERATED_BASES = ["UnslothSFTTrainer.UnslothSFTTrainer", "UnslothSFTTrainer._UnslothSFTTrainer",
                   "trl.trainer.base_trainer._BaseTrainer", "transformers.trainer.Trainer"]
# unsloth_zoo's CPU subclass keeps TRL's module and name (unsloth_zoo/cpu/trainer.py)
CPU_BASES = ["trl.trainer.sft_trainer.SFTTrainer", "trl.trainer.sft_trainer.SFTTrainer",
             "trl.trainer.base_trainer._BaseTrainer", "transformers.trainer.Trainer"]
OURS = ["kitrec_fast.train.trainer.KitrecSFTTrainer", "kitrec_fast.artifacts.checkpoints.AtomicCheckpoints"]


def _train(kind: str, tmp_path: Path) -> dict:
    cache = tmp_path / "unsloth_compiled"
    # the generated trainer's source goes to Unsloth's compile cache: a temporary one, not the checkout
    env = {**os.environ, "UNSLOTH_COMPILE_LOCATION": str(cache)}
    cmd = [sys.executable, str(ROOT / "tests/scripts/trainer_class.py"), kind, str(tmp_path), *ARGS]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, f"STDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_generated_unsloth_trainer_trains_as_the_cpu_runs_trainer(tmp_path, record_property):
    import torch

    gen = _train("generated", tmp_path)

    # Unsloth's generated class, from the file its compiler wrote, is what KitrecSFTTrainer subclassed
    assert gen["base"]["name"] == gen["base"]["module"] == "UnslothSFTTrainer"
    assert Path(gen["base"]["file"]) == tmp_path / "unsloth_compiled" / "UnslothSFTTrainer.py"
    assert gen["mro"][:-1] == OURS + GENERATED_BASES and gen["environment"]["trainer_bases"] == OURS + GENERATED_BASES
    # Each step's loss and nll are token means over the whole accumulated step: per token the
    # smoothed loss is (1-e)*nll + e*U with U = logsumexp(z) - mean(z) >= ln V, and the tiny
    # model's near-uniform predictions keep U within 0.1 of ln V. A loss normalised per micro-batch
    # (num_items_in_batch lost) is the sum of 2 micro-batch means, U then ~2 ln V.
    from kitrec_fast.testkit.tokenizer import QWEN3_VOCAB_SIZE

    eps, ln_v = 0.05, math.log(QWEN3_VOCAB_SIZE)
    for r in gen["train"]:
        u = (r["loss"] - (1 - eps) * r["nll"]) / eps
        assert ln_v - 1e-3 <= u <= ln_v + 0.1, (r["step"], u, ln_v)

    cpu = _train("cpu", tmp_path)
    assert cpu["environment"]["trainer_bases"] == OURS + CPU_BASES
    record_property("generated_mro", " -> ".join(gen["mro"]))

    # fp32 on both sides: no autocast, fp32 activations (the generated __init__ would pick fp16
    # autocast for an fp32 model on a device without bf16 unless told to keep fp32)
    for out in (gen, cpu):
        assert out["args"]["fp16"] is False and out["args"]["bf16"] is False, out["args"]
        assert out["environment"]["autocast"] is False and out["environment"]["activation_dtype"] == "float32"
        assert out["args"]["gradient_accumulation_steps"] == 2 and out["args"]["neftune_noise_alpha"] == 5

    # per step: loss, nll, gradient norm, learning rate and tokens (NEFTune and dropout draw from
    # the same seeded RNG in the same order on both)
    assert [r["step"] for r in gen["train"]] == [r["step"] for r in cpu["train"]] == [1, 2, 3, 4]
    worst_loss = 0.0
    for g, c in zip(gen["train"], cpu["train"]):
        for key in ("loss", "nll", "grad_norm"):
            assert g[key] == pytest.approx(c[key], abs=1e-6), (g["step"], key)
            worst_loss = max(worst_loss, abs(g[key] - c[key])) if key == "loss" else worst_loss
        assert g["num_tokens"] == c["num_tokens"] and g["learning_rate"] == c["learning_rate"]
    record_property("max_loss_diff", worst_loss)

    # the first optimizer step's LoRA gradients (both micro-batches accumulated)
    g1, c1 = (torch.load(tmp_path / f"{k}.pt") for k in ("generated", "cpu"))
    assert sorted(g1) == sorted(c1) and len(g1) == 28 and all(".lora_" in n for n in g1)
    assert {str(v.dtype) for v in g1.values()} == {"torch.float32"}
    worst_grad = max(float((g1[n] - c1[n]).abs().max()) for n in g1)
    assert worst_grad <= 1e-6 and any(float(v.abs().max()) > 1e-4 for v in g1.values())
    record_property("max_grad_diff", worst_grad)

    # the evaluation loop (the generated class overrides evaluate and prediction_step)
    assert [r["step"] for r in gen["eval"]] == [r["step"] for r in cpu["eval"]] == [2, 4]
    for g, c in zip(gen["eval"], cpu["eval"]):
        assert g["eval_loss"] == pytest.approx(c["eval_loss"], abs=1e-6)
        assert g["eval_nll"] == pytest.approx(c["eval_nll"], abs=1e-6)
    assert gen["summary"]["best_checkpoint"].endswith(Path(cpu["summary"]["best_checkpoint"]).name)

    # saving (the generated _save_checkpoint writes a model card first) and the exported adapter
    assert gen["checkpoints"] == cpu["checkpoints"] and sorted(gen["checkpoints"]) == ["checkpoint-2", "checkpoint-4"]
    assert gen["adapter"] == cpu["adapter"]
    from safetensors.torch import load_file

    ga, ca = (load_file(str(tmp_path / k / "adapter" / "adapter_model.safetensors")) for k in ("generated", "cpu"))
    assert sorted(ga) == sorted(ca) and max(float((ga[k] - ca[k]).abs().max()) for k in ga) <= 1e-6

    # resume from checkpoint-2: steps 3 and 4 as the uninterrupted run of the same kind trained them
    for out in (gen, cpu):
        assert [a["resumed_from"] for a in out["resumed_attempts"]] == [None, "checkpoint-2"]
        resumed = [r for r in out["resumed_train"] if r["step"] > 2]
        assert [r["step"] for r in resumed] == [3, 4]
        for r, u in zip(resumed, out["train"][2:]):
            assert r["loss"] == pytest.approx(u["loss"], abs=1e-6), (out["kind"], r["step"])

    # The one difference on the recipe's 4-bit base: TRL's SFTTrainer casts a quantized model's
    # LoRA weights to bf16 (QLoRA), the generated class skips that cast and trains them in fp32.
    assert cpu["adapter_dtypes_4bit"] == ["torch.bfloat16"]
    assert gen["adapter_dtypes_4bit"] == ["torch.float32"]

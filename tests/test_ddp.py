"""Data-parallel training of one recipe: the batch split over processes, the resume check across
world sizes, and a real two-process torchrun (gloo) run against one process on the same global
batches."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kitrec_fast.artifacts import rundir
from kitrec_fast.artifacts.model_card import render_model_card
from kitrec_fast.config import RunConfig, TrainSettings
from kitrec_fast.errors import UserError
from kitrec_fast.parallel import distribute

ROOT = Path(__file__).resolve().parents[1]


def _cfg(micro: int, accum: int) -> RunConfig:
    return RunConfig(train=TrainSettings(per_device_batch_size=micro, gradient_accumulation_steps=accum))


def test_each_process_accumulates_its_share_of_the_recipes_32_rows():
    for world, micro, accum in ((1, 2, 16), (2, 2, 8), (4, 2, 4), (8, 2, 2), (16, 2, 1), (4, 1, 8)):
        t = distribute(_cfg(micro, 32 // micro), world).train
        assert (t.per_device_batch_size, t.gradient_accumulation_steps, t.world_size) == (micro, accum, world)
        assert t.effective_batch_size == 32


@pytest.mark.parametrize("micro,world", [(2, 3), (2, 32), (4, 16)])
def test_a_batch_that_does_not_split_is_a_user_error_naming_the_options(micro, world):
    with pytest.raises(UserError) as err:
        distribute(_cfg(micro, 32 // micro), world)
    msg = str(err.value)
    assert "train.per_device_batch_size" in msg and "train.gradient_accumulation_steps" in msg
    assert f"{world} processes" in msg and "32 rows" in msg


def test_world_size_is_the_launchers_not_a_recipe_setting():
    with pytest.raises(UserError, match="train.world_size"):
        distribute(RunConfig(train=TrainSettings(world_size=2)), 2)


def test_resuming_on_another_world_size_with_the_same_effective_batch_is_no_config_change():
    stored = distribute(_cfg(2, 16), 4).to_dict()  # 2 x 4 on each of 4 processes
    relevant, free = rundir.config_changes(stored, distribute(_cfg(2, 16), 1))
    assert relevant == {} and free["train.world_size"] == (4, 1)
    relevant, _ = rundir.config_changes(stored, distribute(_cfg(2, 8), 1))  # 16 rows per step on one GPU
    assert relevant == {"train.effective_batch_size": (32, 16)}
    relevant, _ = rundir.config_changes(stored, distribute(_cfg(2, 16), 2))  # same batch on 2 GPUs
    assert relevant == {}
    # a run directory from before data parallelism (no world_size recorded) was one process
    old = _cfg(2, 16).to_dict()
    del old["train"]["world_size"]
    assert rundir.config_changes(old, distribute(_cfg(2, 16), 2))[0] == {}
    assert rundir.config_changes(old, distribute(_cfg(2, 32), 2))[0] == {"train.effective_batch_size": (32, 64)}


def test_memory_profile_keeps_its_micro_batch_per_gpu_and_splits_the_accumulation():
    from kitrec_fast.profiles import plan_profile
    from kitrec_fast.recipes import load_recipe
    from kitrec_fast.config import config_from_dict

    cfg = config_from_dict(load_recipe("dualft_music_seta"))
    plan = plan_profile(cfg, "24gb", None, world_size=4)  # 24gb: 1 row per micro-batch
    t = plan.config.train
    assert (t.per_device_batch_size, t.gradient_accumulation_steps, t.world_size) == (1, 8, 4)
    assert t.effective_batch_size == 32 and not plan.warnings
    assert any(r.setting.startswith("train.world_size") and r.after == 4 for r in plan.rows)
    with pytest.raises(UserError, match="3 processes"):
        plan_profile(cfg, "80gb", None, world_size=3)


def test_model_card_states_the_world_size():
    cfg = distribute(_cfg(2, 16), 2)
    card = render_model_card(cfg, {"global_step": 5}, {})
    assert "| batch | 2 x 8 on each of 2 data-parallel processes (effective 32) |" in card
    assert "| world size | 2 (data parallel) |" in card


def _takes_the_repack_path() -> bool:
    """Whether this CPU makes bitsandbytes repack 4-bit weights for inference (AVX512-BF16), read
    from the kernel's flags rather than from bitsandbytes."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return "avx512_bf16" in flags.split()


@pytest.mark.slow
def test_an_evaluation_leaves_the_gradients_of_4bit_training_alone(record_property):
    import bitsandbytes as bnb
    import torch

    from kitrec_fast.backends import get_backend
    from kitrec_fast.backends.common import keep_4bit_layout_trainable
    from kitrec_fast.config import LoraSettings, ModelConfig

    record_property("cpu_avx512_bf16", _takes_the_repack_path())
    cfg = RunConfig(backend="peft", model=ModelConfig(name="testkit:tiny-qwen3"), lora=LoraSettings(dropout=0.0),
                    train=TrainSettings(gradient_checkpointing="off"))
    model = get_backend("peft").load_model(cfg).model
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers
    for m in layers:  # what bitsandbytes sets on an AVX512-BF16 CPU, so that any CPU runs that path
        m.support_avx512bf16_for_cpu = True
    record = keep_4bit_layout_trainable(model)
    assert record["layers"] == len(layers) and record["cpu_avx512_bf16"] == _takes_the_repack_path()
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))

    def gradients() -> dict:
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    before = gradients()
    model.eval()
    with torch.no_grad():  # what an evaluation does
        model(input_ids=ids)
    after = gradients()
    for name, grad in before.items():  # layer 0's LoRA gradients pass through every base projection above it
        torch.testing.assert_close(after[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)


@pytest.mark.slow
def test_data_parallel_gradients_equal_the_whole_batch_gradient():
    # torchrun, 2 CPU ranks (gloo), one row each: after DDP's gradient averaging the LoRA gradients
    # must be those of the two-row batch's mean loss. Without the Trainer's x world_size (which a
    # compute_loss override must apply itself) they come out half as large.
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 400),
           str(ROOT / "tests/scripts/ddp_grad.py"), "data.limit=4", "data.max_length=2048",
           "data.max_candidates=10", "data.min_candidates=3"]
    out = json.loads(_run(cmd, timeout=600).stdout.strip().splitlines()[-1])
    assert out["world_size"] == 2 and out["ddp"] == "DistributedDataParallel" and out["loss_path"] == "chunked"
    assert out["params"] > 0 and out["n_items"] > 0
    assert out["grad_ratio"] == pytest.approx(1.0, rel=1e-4)
    assert out["max_rel_grad_diff"] < 1e-4


# The tiny model in fp32 (no 4-bit) with nothing random in the step (no NEFTune, no dropout), rows
# in plain shuffled order, and plain SGD without clipping: a gradient that is off by any factor
# (a missing sync, a 1/N loss scale) moves the adapter by a different amount. An evaluation after
# every step: steps 2 and 3 train after one. (In 4-bit the two-process adapter differs from the
# one-process one by ~0.3% from the first step on: the LoRA weights train in bf16 there, so their
# gradients are summed in bf16, and two ranks sum them in another order than one process;
# tests/test_train.py::test_4bit_lora_gradients_are_summed_in_bf16_so_their_order_moves_them_by_bf16_rounding
# shows that gap in one process. The 4-bit layers across an evaluation:
# test_an_evaluation_leaves_the_gradients_of_4bit_training_alone.)
ARGS = ["--smoke", "data.limit=16", "data.max_length=2048", "data.max_candidates=10",
        "data.min_candidates=3", "model.load_in_4bit=false", "train.neftune_alpha=null", "lora.dropout=0",
        "train.group_by_length=false", "train.optim=sgd", "train.max_grad_norm=0", "train.warmup_ratio=0",
        "train.learning_rate=0.5", "train.max_steps=3", "train.eval_steps=1", "train.save_steps=1",
        "train.logging_steps=1", "train.per_device_batch_size=1", "train.gradient_accumulation_steps=4"]


def _run(cmd: list[str], env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"STDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
    return proc


def _recipe(backend: str, output_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kitrec_fast.recipes.dualft_music", *ARGS, "--backend", backend,
            "--output-dir", str(output_dir), *extra]


def _adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _close(a: dict, b: dict, rel: float) -> float:
    """The largest relative difference of the LoRA B matrices (zero at the start: all they hold is
    what training added); asserts both hold the same tensors."""
    assert sorted(a) == sorted(b) and any(".lora_B." in k for k in a)
    worst = max(float((a[k] - b[k]).norm() / b[k].norm()) for k in a if ".lora_B." in k)
    assert worst < rel, worst
    return worst


def _steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in rundir.read_metrics(run_dir) if "loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["peft", "unsloth"])  # unsloth: its CPU fallback (stock transformers + PEFT)
def test_two_gloo_ranks_train_as_one_process_on_the_same_global_batches(tmp_path, backend, record_property):
    single, ddp, ranks = tmp_path / "single", tmp_path / "ddp", tmp_path / "ranks"
    _run(_recipe(backend, single))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = _run([*torchrun, str(ROOT / "tests/scripts/ddp_train.py"), str(ranks), *ARGS, "--backend", backend,
                 "--output-dir", str(ddp)])

    # one run, written once: rank 1 neither wrote nor printed
    assert proc.stdout.count("run summary") == 1
    assert _steps(ddp) == [1, 2, 3] and len(rundir.read_attempts(ddp)) == 1
    env = json.loads((ddp / rundir.ENVIRONMENT).read_text())
    assert env["world_size"] == 2 and "WORLD_SIZE" not in json.dumps(env)
    # whether this CPU takes bitsandbytes' repack path, as the run recorded it
    record_property("cpu_avx512_bf16", _takes_the_repack_path())
    assert env["cpu_4bit_repack"]["cpu_avx512_bf16"] == _takes_the_repack_path()
    stored = rundir.read_resolved_config(ddp).train
    assert (stored.per_device_batch_size, stored.gradient_accumulation_steps, stored.world_size) == (1, 2, 2)
    assert "on each of 2 data-parallel processes (effective 4)" in (ddp / "README.md").read_text()
    assert json.loads((ddp / rundir.SUMMARY).read_text())["global_step"] == 3

    # the same optimizer steps and logged numbers as one process: loss and nll over all ranks' tokens
    one, two = ([r for r in rundir.read_metrics(d) if "loss" in r] for d in (single, ddp))
    assert _steps(single) == [1, 2, 3]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["nll"] == pytest.approx(a["nll"], rel=1e-5)
        assert b["num_tokens"] == a["num_tokens"] and b["learning_rate"] == pytest.approx(a["learning_rate"])

    # identical adapters on both ranks, equal to the single process's
    r0, r1 = _adapter(ranks / "rank0.safetensors"), _adapter(ranks / "rank1.safetensors")
    _close(r1, r0, 1e-6)
    _close(_adapter(ddp / "adapter/adapter_model.safetensors"), _adapter(single / "adapter/adapter_model.safetensors"),
           1e-4)

    if backend != "peft":
        return  # the resume logic is the backends' common code
    # resume on one process from the two-process run's step-2 checkpoint: same effective batch, so no
    # config change, and step 3 lands where the single run's did
    resumed = tmp_path / "resumed"
    shutil.copytree(ddp, resumed, ignore=shutil.ignore_patterns("checkpoint-3", "adapter", rundir.SUMMARY))
    out = _run(_recipe(backend, resumed)).stdout
    assert "resuming" in out and "checkpoint-2" in out
    assert _steps(resumed) == [1, 2, 3]
    assert rundir.read_attempts(resumed)[-1]["accepted_config_changes"] == {}
    assert rundir.read_attempts(resumed)[-1]["changed_settings"]["train.world_size"] == [2, 1]
    _close(_adapter(resumed / "adapter/adapter_model.safetensors"),
           _adapter(single / "adapter/adapter_model.safetensors"), 1e-4)

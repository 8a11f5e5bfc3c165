"""Memory profiles: the choice for each card size, and what a profile must never touch."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from kitrec_fast import profiles
from kitrec_fast.config import RunConfig, apply_overrides, config_from_dict
from kitrec_fast.profiles import GIB, GpuInfo, apply_profile, plan_profile, profile_for_memory
from kitrec_fast.recipes import load_recipe

# profile -> (max_length, max_candidates, micro-batch, accumulation, checkpointing on the fast path)
EXPECTED = {
    "16gb": (3072, 30, 1, 32, "unsloth"),
    "24gb": (5120, 50, 1, 32, "unsloth"),
    "48gb": (5120, 50, 2, 16, "unsloth"),
    "80gb": (5120, 50, 2, 16, "standard"),
}

# What torch reports as total_memory for real cards (bytes), and the profile each must get.
CARDS = [
    ("Tesla T4", 15_835_660_288, "16gb"),
    ("NVIDIA L4", 23_580_639_232, "24gb"),
    ("NVIDIA A10G", 23_836_033_024, "24gb"),
    ("NVIDIA GeForce RTX 4090", 25_386_352_640, "24gb"),
    ("Tesla V100-SXM2-32GB", 34_079_637_504, "24gb"),
    ("NVIDIA A100-SXM4-40GB", 42_298_834_944, "48gb"),
    ("NVIDIA RTX A6000", 51_041_271_808, "48gb"),
    ("NVIDIA A100-SXM4-80GB", 85_031_714_816, "80gb"),
    ("NVIDIA H100 80GB HBM3", 85_045_870_592, "80gb"),
    ("NVIDIA H200", 150_110_011_392, "80gb"),
]

# Everything that makes up the learning-rate recipe and the adapter: no profile may change these.
FROZEN_TRAIN = ("learning_rate", "lr_scheduler", "warmup_ratio", "weight_decay", "epochs", "max_steps",
                "label_smoothing", "neftune_alpha", "optim", "max_grad_norm", "seed", "eval_steps", "save_steps")


def recipe(name: str = "dualft_music_seta", **overrides: str) -> RunConfig:
    return config_from_dict(apply_overrides(load_recipe(name), overrides))


@pytest.mark.parametrize("name,total,expected", CARDS)
def test_detected_memory_picks_profile(name: str, total: int, expected: str) -> None:
    assert profile_for_memory(total) == expected
    plan = plan_profile(recipe(), "auto", GpuInfo(name, total, bf16=name != "Tesla T4"))
    assert plan.profile == expected
    assert any(expected in note and name in note for note in plan.notes)


@pytest.mark.parametrize("profile", sorted(EXPECTED))
@pytest.mark.parametrize("name", ["dualft_music_seta", "singleft_movies_setb"])
def test_profile_values_and_frozen_recipe(profile: str, name: str) -> None:
    cfg = recipe(name)
    new = plan_profile(cfg, profile, GpuInfo("card", 80 * GIB, bf16=True)).config
    max_length, candidates, micro, accum, ckpt = EXPECTED[profile]
    assert new.data.max_length == max_length
    assert new.data.max_candidates == candidates
    assert (new.train.per_device_batch_size, new.train.gradient_accumulation_steps) == (micro, accum)
    assert new.train.effective_batch_size == 32
    assert new.train.gradient_checkpointing == ckpt
    for key in FROZEN_TRAIN:
        assert getattr(new.train, key) == getattr(cfg.train, key), key
    assert new.lora == cfg.lora
    assert new.model == cfg.model
    assert new is not cfg and cfg.data.max_length == 5120  # the input config is not mutated


@pytest.mark.parametrize("profile", sorted(EXPECTED))
def test_peft_backend_uses_standard_checkpointing(profile: str) -> None:
    plan = plan_profile(recipe(backend="peft"), profile, None)
    assert plan.config.train.gradient_checkpointing == "standard"
    assert plan.config.train.effective_batch_size == 32
    if profile in ("16gb", "24gb"):
        assert any("peft baseline needs" in n for n in plan.notes)


def test_warnings_name_every_departure_from_the_published_recipe() -> None:
    t4 = plan_profile(recipe(), "16gb", GpuInfo("Tesla T4", 15_835_660_288, bf16=False))
    text = " ".join(t4.warnings)
    assert "max_length 3072 < published 5120" in text
    assert "30 candidates" in text
    assert "float16" in text  # T4 has no bf16
    assert t4.config._warnings == t4.warnings
    for profile in ("24gb", "48gb", "80gb"):
        assert plan_profile(recipe(), profile, GpuInfo("card", 80 * GIB, bf16=True)).warnings == []


def test_16gb_without_gpu_mentions_the_fp16_fallback() -> None:
    plan = plan_profile(recipe(), "16gb", None)
    assert any("float16" in note for note in plan.notes)


def test_explicit_overrides_win_and_are_reported() -> None:
    cfg = recipe(**{"data.max_length": "4096", "train.per_device_batch_size": "4",
                    "train.gradient_accumulation_steps": "8"})
    plan = plan_profile(cfg, "24gb", GpuInfo("NVIDIA L4", 23_580_639_232, bf16=True))
    new = plan.config
    assert new.data.max_length == 4096
    assert (new.train.per_device_batch_size, new.train.gradient_accumulation_steps) == (4, 8)
    assert any(row.reason.startswith("kept") and row.setting == "data.max_length" for row in plan.rows)
    assert any("max_length 4096 < published 5120" in w for w in plan.warnings)


def test_explicit_batch_that_breaks_the_effective_batch_is_warned() -> None:
    cfg = recipe(**{"train.gradient_accumulation_steps": "8"})
    plan = plan_profile(cfg, "48gb", GpuInfo("A100", 42_298_834_944, bf16=True))
    assert plan.config.train.effective_batch_size == 16
    assert any("effective batch 16" in w for w in plan.warnings)


def test_min_candidates_follows_a_lower_ceiling() -> None:
    cfg = recipe(**{"data.min_candidates": "40"})
    new = plan_profile(cfg, "16gb", None).config
    assert new.data.max_candidates == 30 and new.data.min_candidates == 30


def test_auto_without_gpu_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profiles, "detect_gpu", lambda: None)
    out = io.StringIO()
    cfg = recipe()
    new = apply_profile(cfg, "auto", console=Console(file=out, width=200))
    assert new.to_dict() == cfg.to_dict()
    assert new._warnings == []
    assert "no CUDA GPU found" in out.getvalue()


def test_apply_profile_prints_the_table_and_attaches_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profiles, "detect_gpu", lambda: GpuInfo("Tesla T4", 15_835_660_288, bf16=False))
    out = io.StringIO()
    new = apply_profile(recipe(), "auto", console=Console(file=out, width=250))
    printed = out.getvalue()
    assert "memory profile 16gb" in printed and "3072" in printed and "1 x 32" in printed
    assert "warning" in printed and "published 5120" in printed
    assert any("published 5120" in w for w in new._warnings)


def test_unknown_profile_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown memory profile"):
        plan_profile(recipe(), "12gb", None)


def test_recipe_cli_applies_the_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    """The --profile flag of the recipe command line reaches apply_profile (what the README runs)."""
    from kitrec_fast.train.cli import build_parser, parse_run_args, resolve_config

    monkeypatch.setattr(profiles, "detect_gpu", lambda: None)
    parser = build_parser("kitrec-fast train", False, "")
    cfg = resolve_config("dualft_music", parse_run_args(parser, ["--profile", "16gb", "--max-steps", "3"]))
    assert (cfg.data.max_length, cfg.train.per_device_batch_size, cfg.train.max_steps) == (3072, 1, 3)
    assert cfg.train.learning_rate == 2e-4
    assert any("3072" in w for w in cfg._warnings)

"""Every shipped recipe resolves to the published KitREC values (read from the YAML itself)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kitrec_fast.config import PROJECTIONS, ConfigError, apply_overrides, config_from_dict
from kitrec_fast.recipes import FAMILIES, SMOKE_OVERRIDES, list_recipes, recipes_dir

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))

# The SPEC.md table.
SPEC = {
    "dualft": dict(r=32, alpha=64, dropout=0.08, lr=2e-4, warmup=0.05, wd=0.02, epochs=3, smoothing=0.05,
                   neftune=5.0, eval_steps=200, save_steps=200),
    "singleft": dict(r=24, alpha=48, dropout=0.15, lr=6e-5, warmup=0.1, wd=0.05, epochs=6, smoothing=0.1,
                     neftune=3.0, eval_steps=50, save_steps=100),
}


def test_eight_recipes_ship_from_the_top_level_folder():
    assert recipes_dir().resolve() == (ROOT / "recipes").resolve()
    assert len(RECIPES) == 8
    assert list_recipes() == sorted(p.stem for p in RECIPES)
    assert {f"{fam}_set{s}" for fam in FAMILIES for s in "ab"} == set(list_recipes())


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_matches_spec(path):
    text = path.read_text()
    family, set_name = path.stem.rsplit("_set", 1)
    command = f"# python -m kitrec_fast.recipes.{family}" + (" --set B" if set_name == "b" else "")
    assert text.splitlines()[0] == command
    cfg = config_from_dict(yaml.safe_load(text))
    kind, domain = family.split("_")
    spec = SPEC[kind]
    assert cfg.recipe == path.stem
    assert cfg.data.dataset == f"Younggooo/kitrec-{kind}_{domain}-set{set_name}"
    assert (cfg.data.max_length, cfg.data.max_candidates, cfg.data.val_fraction, cfg.data.split_seed) == (5120, 50, 0.1, 42)
    assert cfg.model.name == "Qwen/Qwen3-14B"
    assert cfg.model.load_in_4bit and cfg.model.quant_type == "nf4" and cfg.model.double_quant
    assert cfg.model.compute_dtype == "bfloat16"
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.bias) == (spec["r"], spec["alpha"], spec["dropout"], "none")
    assert cfg.lora.target_modules == PROJECTIONS
    t = cfg.train
    assert (t.per_device_batch_size, t.gradient_accumulation_steps, t.effective_batch_size) == (2, 16, 32)
    assert t.learning_rate == pytest.approx(spec["lr"]) and t.lr_scheduler == "cosine"
    assert t.warmup_ratio == spec["warmup"] and t.weight_decay == spec["wd"] and t.epochs == spec["epochs"]
    assert t.label_smoothing == spec["smoothing"] and t.neftune_alpha == spec["neftune"]
    assert (t.eval_steps, t.save_steps, t.save_total_limit) == (spec["eval_steps"], spec["save_steps"], 3)
    assert (t.early_stopping_patience, t.early_stopping_threshold) == (3, 0.001)
    assert (t.optim, t.max_grad_norm, t.seed, t.group_by_length) == ("adamw_torch_fused", 1.0, 42, True)
    assert t.gradient_checkpointing in ("auto", "unsloth", "standard")


def test_smoke_overrides_are_valid_keys():
    raw = yaml.safe_load(RECIPES[0].read_text())
    nested = {k: str(v) for k, v in SMOKE_OVERRIDES.items() if "." in k}
    cfg = config_from_dict(apply_overrides(raw, nested))
    assert cfg.model.name == "testkit:tiny-qwen3" and cfg.train.max_steps > 0


def test_bad_overrides_name_the_option():
    raw = yaml.safe_load(RECIPES[0].read_text())
    with pytest.raises(ConfigError, match="train.learning_rat"):
        apply_overrides(raw, {"train.learning_rat": "1"})
    with pytest.raises(ConfigError, match="train.max_steps: expects a number"):
        apply_overrides(raw, {"train.max_steps": "many"})
    with pytest.raises(ConfigError, match="data.on_bad_row"):
        config_from_dict(apply_overrides(raw, {"data.on_bad_row": "ignore"}))
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict({**raw, "trian": {}})


@pytest.mark.parametrize("family", FAMILIES)
def test_dry_run_every_recipe(family, capsys):
    from kitrec_fast.recipes._main import main

    for extra in ([], ["--set", "B"]):
        assert main(family, ["--dry-run", *extra, "--max-steps", "7", "train.learning_rate=1e-4",
                             "--backend", "peft"]) == 0
        out = capsys.readouterr().out
        assert f"{family}_set{'b' if extra else 'a'}" in out
        assert "train.max_steps" in out and "0.0001" in out and "peft" in out


def test_overrides_anywhere_on_the_command_line():
    # the README's order: flags, then an override, then more flags
    proc = subprocess.run([sys.executable, "-m", "kitrec_fast", "train", "singleft_movies", "--set", "B",
                           "--max-steps", "50", "train.learning_rate=1e-4", "--dry-run", "lora.r=8"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "singleft_movies_setb" in proc.stdout and "0.0001" in proc.stdout
    assert "│ lora.r " in proc.stdout and "│ 8 " in proc.stdout.split("│ lora.r ", 1)[1].splitlines()[0] + " "


def test_dry_run_checks_trainer_names(capsys):
    from kitrec_fast.recipes._main import main

    assert main("dualft_music", ["--dry-run", "train.lr_scheduler=cosin"]) == 2
    err = capsys.readouterr().err
    assert "train.lr_scheduler: unknown name 'cosin'" in err and "cosine" in err


def test_console_script_lists_recipes():
    proc = subprocess.run([sys.executable, "-m", "kitrec_fast", "recipes"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0
    assert proc.stdout.count("Younggooo/kitrec-") == 8


def test_unknown_recipe_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-m", "kitrec_fast", "train", "dualft_musik", "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown recipe" in proc.stderr and "Traceback" not in proc.stderr


def test_an_option_given_twice_is_an_error():
    proc = subprocess.run([sys.executable, "-m", "kitrec_fast.recipes.dualft_music", "--dry-run", "--max-steps", "10",
                           "train.max_steps=50"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "train.max_steps: set twice (--max-steps 10 and train.max_steps=50)" in proc.stderr



@pytest.mark.parametrize("argv, flag", [
    (["--dry-run", "--max-steps", "10", "--max-steps", "20"], "--max-steps"),
    (["--dry-run", "--set", "B", "--set", "A"], "--set"),
    (["--smoke", "--dry-run", "--smoke"], "--smoke"),  # store_true flags too
    (["--dry-run", "--dry-run"], "--dry-run"),
])
def test_a_flag_given_twice_is_one_error_line(argv, flag, capsys):
    from kitrec_fast.recipes._main import main

    assert main("dualft_music", argv) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {flag}: given twice; give it once\n" and "usage" not in captured.out


@pytest.mark.parametrize("argv, line", [
    (["--dry-run", "--max-steps", "3.5"], "error: --max-steps: expects a whole number, got '3.5'\n"),
    (["--dry-run", "train.max_steps=2.5"], "error: train.max_steps: expects a whole number, got 2.5\n"),
])
def test_a_fractional_step_count_is_one_error_line_either_way(argv, line, capsys):
    from kitrec_fast.recipes._main import main

    assert main("dualft_music", argv) == 2
    captured = capsys.readouterr()
    assert captured.err == line and "usage" not in captured.out + captured.err


def test_help_lists_verbose_and_debug():
    for cmd in (["-m", "kitrec_fast", "--help"], ["-m", "kitrec_fast", "train", "--help"]):
        proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "--verbose" in proc.stdout and "--debug" in proc.stdout, proc.stdout


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_dry_run_refuses_an_empty_dataset(tmp_path, capsys, content):
    from kitrec_fast.recipes._main import main

    empty = tmp_path / "rows.jsonl"
    empty.write_text(content)
    assert main("dualft_music", ["--dry-run", "--smoke", "--dataset", str(empty),
                                 "--output-dir", str(tmp_path / "run")]) == 2
    assert f"{empty} is empty" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _int_settings() -> list[str]:
    """Every whole-number setting of the config dataclasses, read from their annotations."""
    import dataclasses
    import typing

    from kitrec_fast.config import _SECTIONS

    keys = []
    for section, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            if hint is int or hint == typing.Optional[int]:
                keys.append(f"{section}.{f.name}")
    return keys


def test_every_whole_number_setting_refuses_a_fraction_before_anything_loads(capsys):
    from kitrec_fast.recipes._main import main

    keys = _int_settings()
    assert {"train.per_device_batch_size", "train.gradient_accumulation_steps", "train.seed", "lora.r",
            "data.max_length", "data.limit"} <= set(keys)
    raw = yaml.safe_load(RECIPES[0].read_text())
    for key in keys:
        with pytest.raises(ConfigError, match=rf"^{key}: expects a whole number, got 2\.7$"):
            config_from_dict(apply_overrides(raw, {key: "2.7"}))
    # the commands: one error line in the dry run, exit 2
    for override in ("train.per_device_batch_size=1.5", "train.gradient_accumulation_steps=2.7", "train.seed=1.9"):
        assert main("dualft_music", ["--dry-run", "--smoke", override]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {override.split('=')[0]}: expects a whole number") and err.count("\n") == 1
    # a whole-valued float is that number; text settings stay text; ranges still apply
    cfg = config_from_dict(apply_overrides(raw, {"lora.r": "8.0", "model.revision": "1234", "train.epochs": "2"}))
    assert (cfg.lora.r, cfg.model.revision, cfg.train.epochs) == (8, "1234", 2.0)
    assert type(cfg.lora.r) is int and type(cfg.train.epochs) is float
    for key, value in (("train.seed", "-1"), ("data.split_seed", str(2**32)), ("train.max_grad_norm", "-1"),
                       ("train.early_stopping_threshold", "-0.1")):
        with pytest.raises(ConfigError, match=rf"^{key}: must be"):
            config_from_dict(apply_overrides(raw, {key: value}))
    with pytest.raises(ConfigError, match=r"^model.load_in_4bit: expects true or false"):
        config_from_dict({**raw, "model": {**raw["model"], "load_in_4bit": "yes"}})


def test_dry_run_reads_a_local_dataset_as_the_run_would(tmp_path, capsys):
    # a download cut short: the last line is torn; the dry run used to call this "valid"
    import json

    from kitrec_prompts import make_row

    from kitrec_fast.recipes._main import main

    data = tmp_path / "rows.jsonl"
    rows = [json.dumps(make_row(user_id=f"U{i}", words=4)) for i in range(4)]
    data.write_text("\n".join(rows[:3]) + "\n" + rows[3][:60])
    argv = ["--dry-run", "--smoke", "--dataset", str(data), "--output-dir", str(tmp_path / "run")]
    assert main("dualft_music", argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: data.dataset (--dataset):") and "row 4 (1-based" in err and "not valid JSON" in err
    assert "--on-bad-row skip" in err and not (tmp_path / "run").exists()
    assert main("dualft_music", argv + ["data.on_bad_row=skip"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"{data}: 3 usable rows, 1 bad (skipped: data.on_bad_row=skip)" in out

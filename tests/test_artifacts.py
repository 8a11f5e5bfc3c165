"""Run-directory artifacts: the 16-bit merge keeps the fine-tune, push selects files and guards the token."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kitrec_fast.artifacts import rundir
from kitrec_fast.artifacts.export import base_for_merge, export_merged
from kitrec_fast.artifacts.plots import plot_loss_curves
from kitrec_fast.artifacts.push import files_to_push, resolve_token
from kitrec_fast.config import RunConfig
from kitrec_fast.testkit.tiny_model import save_tiny_qwen3

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_qwen3(tmp_path_factory.mktemp("tiny") / "model", seed=3)


def _fake_run(tmp_path: Path, tiny_dir: Path) -> Path:
    """A run dir whose adapter has large, random LoRA weights (a 'trained' adapter)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    (run / rundir.ADAPTER_DIR).mkdir(parents=True)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(1)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    peft_model.save_pretrained(str(run / rundir.ADAPTER_DIR))
    AutoTokenizer.from_pretrained(str(tiny_dir)).save_pretrained(str(run / rundir.ADAPTER_DIR))
    cfg = RunConfig(recipe="t", backend="peft")
    cfg.model.name = str(tiny_dir)
    rundir.write_resolved_config(run, cfg, "python -m kitrec_fast train t")
    (run / rundir.ENVIRONMENT).write_text(json.dumps({"weights": str(tiny_dir)}))
    return run


def test_merged_export_matches_the_adapter_model(tmp_path, tiny_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = _fake_run(tmp_path, tiny_dir)
    # the run's summary names the 4-bit weights it trained on; the merge goes into the 16-bit ones
    (run / rundir.SUMMARY).write_text(json.dumps({"weights": "org/tiny-unsloth-bnb-4bit", "status": "finished"}))
    out = export_merged(run, tmp_path / "merged", dtype="float32")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    for path in out.iterdir():  # an export is shared: every file readable by group and others
        assert path.stat().st_mode & 0o044 == 0o044, (path.name, oct(path.stat().st_mode))
    card = (out / "README.md").read_text()
    assert card.startswith(f"---\nbase_model: {tiny_dir}\n") and "library_name: transformers" in card
    assert "merged into float32 weights" in card and "AutoModelForCausalLM" in card and "AutoPeft" not in card
    info = json.loads((out / "kitrec_export.json").read_text())
    assert info["base_model"] == str(tiny_dir)
    assert info["merged_modules"] == 2 * 3 and info["merged_layers"] == 2  # 2 layers x (q, v, down)
    assert "to 6 modules in 2 layers" in card

    ids = torch.randint(0, 151_000, (2, 24), generator=torch.Generator().manual_seed(0))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    with torch.no_grad():
        plain = base(ids).logits
        adapted = PeftModel.from_pretrained(base, str(run / "adapter"))(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)(ids).logits
    assert not any("lora" in k for k in merged_state_keys(out))
    assert (adapted - plain).abs().max() > 1e-3  # the adapter changes the model ...
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)  # ... and the merge keeps that change


def merged_state_keys(out: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        return list(f.keys())


def test_prequantized_weights_merge_into_their_origin():
    assert base_for_merge("unsloth/Qwen3-14B-unsloth-bnb-4bit") == "unsloth/Qwen3-14B"
    assert base_for_merge("unsloth/Qwen3-14B-bnb-4bit") == "unsloth/Qwen3-14B"
    assert base_for_merge("Qwen/Qwen3-14B") == "Qwen/Qwen3-14B"


def test_export_refuses_the_run_directory_and_a_folder_in_use(tmp_path, tiny_dir, capsys):
    from kitrec_fast.cli import main

    run = _fake_run(tmp_path, tiny_dir)
    card = "the run's own card"
    (run / "README.md").write_text(card)
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    for out, says in ((run, "inside the run directory"), (run / "merged", "inside the run directory"),
                      (used, "is not an empty folder"), (used / "notes.txt", "exists and is not a folder")):
        assert main(["export", str(run), "--merged-16bit", str(out)]) == 2
        assert says in capsys.readouterr().err
    assert (run / "README.md").read_text() == card and not (run / "merged").exists()
    assert sorted(p.name for p in used.iterdir()) == ["notes.txt"]


def test_export_cli_on_a_directory_without_adapter(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kitrec_fast", "export", str(tmp_path), "--merged-16bit",
                           str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "adapter_config.json" in proc.stderr and "Traceback" not in proc.stderr


def test_push_selects_adapter_and_records_and_needs_a_token(tmp_path, tiny_dir, monkeypatch):
    run = _fake_run(tmp_path, tiny_dir)
    (run / rundir.METRICS).write_text('{"step": 1, "loss": 2.0}\n')
    (run / "checkpoint-1").mkdir()
    (run / "checkpoint-1" / "optimizer.pt").write_text("x")
    files = files_to_push(run)
    assert "adapter_model.safetensors" in files and "adapter_config.json" in files
    assert "run/resolved_config.yaml" in files and "run/metrics.jsonl" in files
    assert not any("checkpoint" in k or "optimizer" in k for k in files)

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored login either
    with pytest.raises(PermissionError, match="HF_TOKEN"):
        resolve_token()
    secret = "hf_" + "x" * 34
    monkeypatch.setenv("HF_TOKEN", secret)
    assert resolve_token() == secret
    proc = subprocess.run([sys.executable, "-m", "kitrec_fast", "push", str(run), "--repo", "someone/x"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "HF_TOKEN": secret, "HF_HUB_OFFLINE": "1"})
    assert secret not in proc.stdout + proc.stderr  # the upload fails offline, without echoing the token
    assert not any(secret in p.read_text(errors="ignore") for p in run.rglob("*") if p.is_file())


def test_loss_curve_plot_from_metrics(tmp_path):
    rows = [{"step": s, "loss": 3.0 - 0.1 * s, "nll": 2.9 - 0.1 * s} for s in range(1, 6)]
    rows += [{"step": 5, "eval_loss": 2.6, "eval_nll": 2.5}]
    png = plot_loss_curves(rows, tmp_path / "c.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_loss_curves([{"step": 1, "learning_rate": 1e-4}], tmp_path / "none.png") is None


def test_push_refuses_a_smoke_run(tmp_path, tiny_dir):
    from kitrec_fast.artifacts.push import push_run

    run = _fake_run(tmp_path, tiny_dir)
    cfg = rundir.read_resolved_config(run)
    cfg.smoke = True
    rundir.write_resolved_config(run, cfg, "python -m kitrec_fast.recipes.dualft_music --smoke")
    with pytest.raises(ValueError, match="smoke run"):
        push_run(run, "someone/x")


def _checkpoint(run: Path, step: int) -> None:
    (run / f"checkpoint-{step}").mkdir(parents=True)
    (run / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def test_last_checkpoint_is_the_newest_of_several(tmp_path):
    for step in (200, 1000, 600, 800):
        _checkpoint(tmp_path, step)
    (tmp_path / "checkpoint-1200").mkdir()  # a save killed before its trainer state was written
    (tmp_path / "checkpoint-tmp").mkdir()
    assert rundir.last_checkpoint(tmp_path) == tmp_path / "checkpoint-1000"  # numeric, not "800" > "1000"
    assert rundir.last_checkpoint(tmp_path / "nothing") is None


def test_config_changes_split_training_settings_from_free_ones():
    from kitrec_fast.recipes import load_recipe

    from kitrec_fast.config import apply_overrides, config_from_dict

    stored = load_recipe("dualft_music_seta")

    def changes(**overrides):
        cfg = config_from_dict(apply_overrides(stored, {k.replace("__", "."): str(v) for k, v in overrides.items()}))
        return rundir.config_changes(stored, cfg)

    assert changes() == ({}, {})
    relevant, free = changes(train__learning_rate="1e-3", train__eval_steps=100, output_dir="elsewhere")
    assert relevant == {"train.learning_rate": (0.0002, 0.001)}
    assert set(free) == {"train.eval_steps", "output_dir"}
    # the micro-batch split may change while the effective batch stays 32 ...
    relevant, free = changes(train__per_device_batch_size=1, train__gradient_accumulation_steps=32)
    assert relevant == {} and set(free) == {"train.per_device_batch_size", "train.gradient_accumulation_steps"}
    # ... but not the effective batch
    relevant, _ = changes(train__gradient_accumulation_steps=8)
    assert relevant == {"train.effective_batch_size": (32, 16)}
    for key, value in (("data__max_length", 4096), ("lora__r", 16), ("train__neftune_alpha", "null"),
                       ("train__label_smoothing", 0), ("train__seed", 1), ("train__warmup_ratio", 0.1),
                       ("train__epochs", 2), ("train__max_steps", 10), ("model__name", "x"),
                       ("train__weight_decay", 0), ("data__split_seed", 7)):
        assert list(changes(**{key: value})[0]) == [key.replace("__", ".")], key
    # an option removed from the code since the run was made is not a change
    assert rundir.config_changes({**stored, "data": {**stored["data"], "gone": 1}},
                                 config_from_dict(stored)) == ({}, {})


def test_retire_abandoned_metrics_keeps_one_clean_run(tmp_path):
    rows = [{"step": s, "loss": 1.0 / s, "time": 100.0 + s} for s in (1, 2, 3, 4, 5)]
    rows.insert(4, {"step": 4, "eval_loss": 0.5, "time": 104.5})
    rows.append({"step": 5, "train_runtime": 9.0, "time": 106.0})
    (tmp_path / rundir.METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert rundir.retire_abandoned_metrics(tmp_path, resume_step=4, previous_attempt=1) == 2
    kept = rundir.read_metrics(tmp_path)
    assert [(r["step"], "eval_loss" in r) for r in kept] == [(1, False), (2, False), (3, False), (4, False), (4, True)]
    moved = [json.loads(line) for line in (tmp_path / rundir.ABANDONED_METRICS).read_text().splitlines()]
    assert [r["step"] for r in moved] == [5, 5] and all(r["attempt"] == 1 for r in moved)
    # a killed attempt's wall time runs to the last row it logged
    attempts = [{"attempt": 1, "started_at": 90.0, "wall_seconds": None},
                {"attempt": 2, "started_at": 200.0, "wall_seconds": 30.0}]
    assert rundir.total_wall_seconds(tmp_path, attempts) == pytest.approx(16.0 + 30.0)

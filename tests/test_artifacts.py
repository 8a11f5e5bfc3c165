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
    out = export_merged(run, tmp_path / "merged", dtype="float32")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    info = json.loads((out / "kitrec_export.json").read_text())
    assert info["merged_layers"] == 2 * 3  # 2 layers x (q, v, down)

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


def test_export_cli_on_a_directory_without_adapter(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kitrec_fast", "export", str(tmp_path), "--merged-16bit",
                           str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "adapter_config.json" in proc.stdout


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

"""Every command that loads a dataset, tokenizer or model by Hub id, with the Hub unreachable and
nothing cached: one ``error:`` line naming the id, the option and the two ways out, exit 2, nothing
written, and no retries first (huggingface_hub retries a refused connection for ~25 s).

Two ways of being unreachable: ``HF_HUB_OFFLINE=1``, and offline mode unset with the endpoint on a
loopback port nothing listens on (no packet leaves the machine). ``HF_HOME`` points at an empty
folder so that a developer's own Hub cache cannot make an id "cached".
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HUB_DATASET = "Younggooo/kitrec-dualft_music-seta"
HUB_MODEL = "Qwen/Qwen3-0.6B"


def _env(tmp_path: Path, how: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                                            "TRANSFORMERS_OFFLINE", "HF_ENDPOINT")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=str(ROOT))
    if how == "offline":
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    else:
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # discard port: connection refused at once
    return env


def _run(tmp_path: Path, how: str, *args: str) -> subprocess.CompletedProcess:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "kitrec_fast", *args], cwd=work, env=_env(tmp_path, how),
                          capture_output=True, text=True, timeout=600)


def _assert_one_line(proc: subprocess.CompletedProcess, name: str, option: str, how: str, tmp_path: Path) -> str:
    out = proc.stderr + proc.stdout  # eval generate prints its error line on its console (stdout)
    lines = out.strip().splitlines()
    assert proc.returncode == 2, out[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), out[-3000:]  # no traceback, no "Retrying"
    line = lines[0]
    assert option in line and repr(name) in line and "nothing is cached" in line
    assert f"hf download {name}" in line and "pass a local" in line
    assert ("_OFFLINE=1 is set" if how == "offline" else "http://127.0.0.1:9 did not answer") in line
    assert not any((tmp_path / "work").iterdir()), "nothing is written"
    return line


@pytest.mark.parametrize("how", ["offline", "unreachable"])
def test_data_prepare_with_a_hub_dataset(tmp_path, how):
    proc = _run(tmp_path, how, "data", "prepare", "--dataset", HUB_DATASET, "--tokenizer", "offline:qwen3",
                "--output", "prepared")
    line = _assert_one_line(proc, HUB_DATASET, "--dataset", how, tmp_path)
    assert "--repo-type dataset" in line


def test_data_prepare_with_a_hub_tokenizer(tmp_path):
    proc = _run(tmp_path, "offline", "data", "prepare", "--dataset", "embedded:dualft_music", "--tokenizer",
                HUB_MODEL, "--output", "prepared")
    _assert_one_line(proc, HUB_MODEL, "--tokenizer", "offline", tmp_path)


def test_recommend_with_a_hub_dataset(tmp_path, lora_run_dir):
    # offline only: the unreachable endpoint takes the same path, shown by data prepare above
    how = "offline"
    proc = _run(tmp_path, how, "recommend", "--run", str(lora_run_dir), "--dataset", "Younggooo/kitrec-test-seta",
                "--row", "3")
    _assert_one_line(proc, "Younggooo/kitrec-test-seta", "--dataset", how, tmp_path)


def test_eval_generate_with_a_hub_dataset(tmp_path, lora_run_dir):
    proc = _run(tmp_path, "offline", "eval", "generate", "--run", str(lora_run_dir), "--dataset", HUB_DATASET,
                "--limit", "2", "--max-new-tokens", "4", "--engine", "hf", "--output", "preds")
    _assert_one_line(proc, HUB_DATASET, "--dataset", "offline", tmp_path)


def test_train_with_a_hub_model_stops_before_the_run_directory(tmp_path):
    proc = _run(tmp_path, "offline", "train", "dualft_music", "--smoke", "--backend", "peft", "--output-dir", "run",
                f"model.name={HUB_MODEL}")
    _assert_one_line(proc, HUB_MODEL, "model.name", "offline", tmp_path)


def test_export_merged_with_a_hub_base(tmp_path, lora_run_dir):
    proc = _run(tmp_path, "offline", "export", str(lora_run_dir), "--merged-16bit", "merged",
                "--base-model", HUB_MODEL)
    _assert_one_line(proc, HUB_MODEL, "--base-model", "offline", tmp_path)


def test_a_hub_load_no_loader_wrapped_is_still_one_line(tmp_path):
    # the net under every command (run_cli): a library call that needs the Hub, made outside the
    # loaders (push, a future command), fails on one line naming what it asked for
    code = ("import huggingface_hub\nfrom kitrec_fast.errors import run_cli\n"
            "raise SystemExit(run_cli(lambda argv: huggingface_hub.hf_hub_download('Qwen/Qwen3-0.6B', "
            "'config.json'), []))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(tmp_path, "offline"),
                          capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: cannot reach the Hugging Face Hub (HF_HUB_OFFLINE=1 is set; ")
    assert "nothing is cached" in lines[0] and "hf download" in lines[0]

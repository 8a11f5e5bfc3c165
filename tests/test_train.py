"""Training end to end on CPU through both backends with the tiny Qwen3 (real steps, real loss).

Each run is its own process: the unsloth backend patches transformers/trl process-wide, and the
peft baseline must never share a process with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Short prompts keep CPU steps fast while exercising the real pipeline (truncation included).
FAST = ["data.limit=16", "data.max_length=2048", "data.max_candidates=10", "data.min_candidates=3"]


def run_recipe(backend: str, out: Path, *overrides: str, timeout: int = 600, family: str = "dualft_music"):
    cmd = [sys.executable, "-m", f"kitrec_fast.recipes.{family}", "--smoke", "--backend", backend,
           "--output-dir", str(out), *FAST, *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
    return proc


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def trainer_state(ckpt: Path) -> dict:
    return json.loads((ckpt / "trainer_state.json").read_text())


@pytest.mark.parametrize("backend", ["unsloth", "peft"])
def test_loss_goes_down_on_a_repeated_set(tmp_path, backend):
    # The same two rows every step: a working optimizer step must fit them. The LM head is frozen
    # and random, so the tiny model moves slowly; 6 steps at lr 1e-2 drop the loss by ~0.25 nats.
    run = tmp_path / backend
    run_recipe(backend, run, "data.limit=2", "data.val_fraction=0", "train.max_steps=6",
               "train.learning_rate=1e-2", "train.warmup_ratio=0", "train.gradient_accumulation_steps=1",
               "train.neftune_alpha=null", "train.save_steps=6", "train.eval_steps=6", "lora.dropout=0")
    losses = [r["loss"] for r in metrics(run) if "loss" in r]
    assert len(losses) == 6
    assert losses[-1] < losses[0] - 0.15, losses
    assert max(losses[1:]) < losses[0], losses
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 6 and summary["loss_path"] == "chunked"
    # the run directory a user gets
    for name in ("resolved_config.yaml", "environment.json", "metrics.jsonl", "loss_curves.png", "README.md",
                 "data_report.json", "adapter/adapter_model.safetensors", "adapter/adapter_config.json",
                 "adapter/tokenizer.json"):
        assert (run / name).is_file(), name
    assert (run / "resolved_config.yaml").read_text().startswith("# python -m kitrec_fast.recipes.dualft_music")
    env = json.loads((run / "environment.json").read_text())
    assert env["backend"] == backend and env["weights"] and env["versions"]["transformers"]


def test_both_backends_see_identical_batches():
    outs = {}
    for backend in ("unsloth", "peft"):
        cmd = [sys.executable, str(ROOT / "tests/scripts/batch_digest.py"), backend, "3", *FAST]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        outs[backend] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outs["unsloth"]["unsloth_imported"] is True
    assert outs["peft"]["unsloth_imported"] is False  # the baseline process never imported unsloth
    a, b = outs["unsloth"]["batches"], outs["peft"]["batches"]
    assert len(a) == 3
    for ba, bb in zip(a, b):
        assert ba["input_ids"] == bb["input_ids"]
        assert ba["labels"] == bb["labels"]
        assert any(l != -100 for row in ba["labels"] for l in row)


def test_best_checkpoint_is_lowest_eval_loss_and_early_stopping_stops(tmp_path):
    run = tmp_path / "es"
    # threshold 10: no eval can improve by that much, so patience 1 stops at the second eval.
    run_recipe("peft", run, "data.limit=24", "train.max_steps=12", "train.eval_steps=1", "train.save_steps=1",
               "train.save_total_limit=2", "train.early_stopping_patience=1",
               "train.early_stopping_threshold=10", "train.gradient_accumulation_steps=1")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 2 and summary["early_stopped"] is True
    evals = [(r["step"], r["eval_loss"]) for r in metrics(run) if "eval_loss" in r]
    assert [s for s, _ in evals] == [1, 2]
    best_step = min(evals, key=lambda e: e[1])[0]
    assert summary["best_checkpoint"].endswith(f"checkpoint-{best_step}")
    # the exported adapter is that checkpoint's weights
    from safetensors.torch import load_file

    best = load_file(str(Path(summary["best_checkpoint"]) / "adapter_model.safetensors"))
    final = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert best.keys() == final.keys()
    assert all((best[k] == final[k]).all() for k in best)


def test_sigterm_checkpoints_and_rerun_resumes(tmp_path):
    run = tmp_path / "resume"
    args = [sys.executable, "-m", "kitrec_fast.recipes.dualft_music", "--smoke", "--backend", "unsloth",
            "--output-dir", str(run), *FAST, "data.val_fraction=0", "train.max_steps=6",
            "train.gradient_accumulation_steps=1",
            "train.save_steps=3", "train.eval_steps=3"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 400
    while time.time() < deadline:
        rows = metrics(run) if (run / "metrics.jsonl").is_file() else []
        if any(r.get("step", 0) >= 1 and "loss" in r for r in rows):
            break
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    stopped = summary["global_step"]
    assert summary["interrupted"] == "SIGTERM" and 1 <= stopped < 6, summary
    assert (run / f"checkpoint-{stopped}" / "trainer_state.json").is_file()
    assert not (run / "adapter").exists()

    # the same command again continues from that step to the end
    proc2 = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc2.returncode == 0, proc2.stdout[-3000:] + proc2.stderr[-3000:]
    assert "resuming" in proc2.stdout
    summary2 = json.loads((run / "summary.json").read_text())
    assert summary2["global_step"] == 6 and summary2["interrupted"] is None
    steps = [r["step"] for r in metrics(run) if "loss" in r]
    assert steps[: stopped] == list(range(1, stopped + 1))
    assert steps[stopped:] == list(range(stopped + 1, 7))  # no step trained twice

    # a third time: the run is finished, nothing is trained
    proc3 = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc3.returncode == 0 and "finished run" in proc3.stdout
    assert json.loads((run / "summary.json").read_text())["global_step"] == 6
    assert not (run / "checkpoint-7").exists()


def test_no_gpu_without_smoke_says_what_to_run(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    proc = subprocess.run([sys.executable, "-m", "kitrec_fast.recipes.dualft_music", "--output-dir",
                           str(tmp_path / "x")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "No CUDA GPU" in proc.stdout and "--smoke" in proc.stdout


@pytest.mark.parametrize("backend", ["unsloth", "peft"])
def test_training_step_loss_matches_full_logits_reference(backend):
    # Smoothing on (the recipe's 0.05); NEFTune and LoRA dropout off so both passes see the same inputs.
    cmd = [sys.executable, str(ROOT / "tests/scripts/loss_parity.py"), backend, *FAST, "data.limit=4",
           "train.neftune_alpha=null", "lora.dropout=0"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["eps"] == 0.05 and out["loss_path"] == "chunked"
    assert out["ours"] == pytest.approx(out["reference"], rel=1e-5)
    assert out["same_grad_keys"] and out["n_grads"] > 0
    assert out["max_rel_grad_diff"] < 1e-3


def test_without_smoothing_the_fast_path_keeps_the_library_loss():
    # label_smoothing 0: the unsloth backend uses the model's own (fused on GPU) loss, which must
    # equal plain cross-entropy on full logits.
    cmd = [sys.executable, str(ROOT / "tests/scripts/loss_parity.py"), "unsloth", *FAST, "data.limit=4",
           "train.neftune_alpha=null", "lora.dropout=0", "train.label_smoothing=0"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["eps"] == 0 and out["loss_path"] == "library"
    assert out["ours"] == pytest.approx(out["reference"], rel=1e-5)
    assert out["max_rel_grad_diff"] < 1e-3


def test_unknown_scheduler_or_optimizer_fails_before_any_work(tmp_path):
    for override, option in (("train.lr_scheduler=cosine_wiht_restarts", "train.lr_scheduler"),
                             ("train.optim=adamw_fast", "train.optim")):
        proc = subprocess.run([sys.executable, "-m", "kitrec_fast.recipes.dualft_music", "--smoke", "--backend",
                               "peft", "--output-dir", str(tmp_path / "bad"), override],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"{option}: unknown name" in proc.stdout and "Traceback" not in proc.stderr
        assert not (tmp_path / "bad" / "data_report.json").exists()  # stopped before data preparation

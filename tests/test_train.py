"""Training end to end on CPU through both backends with the tiny Qwen3 (real steps, real loss).

Each run is its own process: the unsloth backend patches transformers/trl process-wide, and the
peft baseline must never share a process with it.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import FAST, ROOT


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


@functools.cache
def trainer_checks(backend: str) -> dict:
    """tests/scripts/trainer_checks.py for one backend: every trainer-level check below from one process
    (each process costs ~20 s of imports before its first check); run once per backend per worker."""
    cmd = [sys.executable, str(ROOT / "tests/scripts/trainer_checks.py"), backend, *FAST]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_both_backends_see_identical_batches():
    outs = {backend: trainer_checks(backend) for backend in ("unsloth", "peft")}
    assert outs["unsloth"]["unsloth_imported"] is True
    assert outs["peft"]["unsloth_imported"] is False  # the baseline process never imported unsloth
    a, b = outs["unsloth"]["batches"], outs["peft"]["batches"]
    assert len(a) == 3
    for ba, bb in zip(a, b):
        assert ba == bb
        assert ba["trained"] > 0


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


@pytest.mark.parametrize("backend", ["unsloth", "peft"])
def test_training_step_loss_matches_full_logits_reference(backend):
    # Smoothing on (the recipe's 0.05); NEFTune and LoRA dropout off so both passes see the same inputs.
    out = trainer_checks(backend)["loss"]
    assert out["eps"] == 0.05 and out["loss_path"] == "chunked"
    assert out["ours"] == pytest.approx(out["reference"], rel=1e-5)
    assert out["same_grad_keys"] and out["n_grads"] > 0
    assert out["max_rel_grad_diff"] < 1e-3


def test_without_smoothing_the_fast_path_keeps_the_library_loss():
    # label_smoothing 0: the unsloth backend uses the model's own (fused on GPU) loss, which must
    # equal plain cross-entropy on full logits.
    out = trainer_checks("unsloth")["loss_eps0"]
    assert out["eps"] == 0 and out["loss_path"] == "library"
    assert out["ours"] == pytest.approx(out["reference"], rel=1e-5)
    assert out["same_grad_keys"] and out["n_grads"] > 0
    assert out["max_rel_grad_diff"] < 1e-3


def test_unknown_scheduler_or_optimizer_fails_before_any_work(tmp_path):
    for override, option in (("train.lr_scheduler=cosine_wiht_restarts", "train.lr_scheduler"),
                             ("train.optim=adamw_fast", "train.optim")):
        proc = subprocess.run([sys.executable, "-m", "kitrec_fast.recipes.dualft_music", "--smoke", "--backend",
                               "peft", "--output-dir", str(tmp_path / "bad"), override],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"{option}: unknown name" in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "bad" / "data_report.json").exists()  # stopped before data preparation


# --- the run directory: one shared smoke run (tests/conftest.py), copied before anything changes ---


def _interrupted_copy(smoke_run, tmp_path: Path, keep_step: int) -> Path:
    """The shared finished run as if its attempt had been killed after ``checkpoint-{keep_step}``:
    later checkpoints, the adapter and the summary gone; metrics.jsonl still holds the rows the
    attempt logged after that checkpoint."""
    run = tmp_path / "run"
    shutil.copytree(smoke_run.run_dir, run)
    for ckpt in run.glob("checkpoint-*"):
        if int(ckpt.name.split("-")[1]) > keep_step:
            shutil.rmtree(ckpt)
    shutil.rmtree(run / "adapter")
    (run / "summary.json").unlink()
    return run


def test_smoke_run_directory_describes_one_finished_attempt(smoke_run):
    run = smoke_run.run_dir
    for name in ("resolved_config.yaml", "attempts.json", "environment.json", "metrics.jsonl", "loss_curves.png",
                 "README.md", "data_report.json", "summary.json", "adapter/adapter_model.safetensors",
                 "adapter/adapter_config.json", "adapter/tokenizer.json", "adapter/README.md"):
        assert (run / name).is_file(), name
    assert (run / "resolved_config.yaml").read_text().startswith("# python -m kitrec_fast.recipes.dualft_music --smoke")
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["global_step"] == 6 and summary["attempts"] == 1
    attempts = json.loads((run / "attempts.json").read_text())
    assert [a["outcome"] for a in attempts] == ["finished"] and attempts[0]["resumed_from"] is None
    assert summary["wall_seconds"] == attempts[0]["wall_seconds"] > 0
    rows = metrics(run)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert {r["attempt"] for r in rows} == {1}
    # what the training steps ran with is recorded after training (CPU: no autocast, fp32 activations)
    env = json.loads((run / "environment.json").read_text())
    assert env["autocast"] is False and env["activation_dtype"] == "float32" and env["world_size"] == 1
    assert env["attn_implementation"] == "sdpa"
    # the classes it trained with: the baseline subclasses TRL's own SFTTrainer (no Unsloth class)
    assert env["trainer_bases"] == ["kitrec_fast.train.trainer.KitrecSFTTrainer",
                                    "kitrec_fast.artifacts.checkpoints.AtomicCheckpoints",
                                    "trl.trainer.sft_trainer.SFTTrainer", "trl.trainer.base_trainer._BaseTrainer",
                                    "transformers.trainer.Trainer"]
    card = (run / "README.md").read_text()
    assert "# dualft_music_seta: KitREC LoRA adapter" in card and "Interrupted" not in card
    # every file of the run, checkpoints included, is shared (safetensors writes its files 0600)
    for path in (p for p in run.rglob("*") if p.is_file()):
        assert path.stat().st_mode & 0o644 == 0o644, (str(path.relative_to(run)), oct(path.stat().st_mode))
    assert not (run / ".train.lock").exists()  # the run's lock ended with it
    log = (run / "train.log").read_text()
    assert log.startswith("===== attempt 1, 20") and "run summary" in log and "\x1b[" not in log


def test_logged_train_nll_is_bounded_by_the_smoothed_loss(smoke_run):
    """Per token the smoothed loss is (1-e)*nll + e*U with U = mean_j(-log p_j) = logsumexp(z) - mean(z)
    >= ln V (Jensen: the mean of exp(z_j) is at least exp of the mean of z_j). So
    nll <= (loss - e*ln V) / (1-e) for every token, hence for the token mean of a step, which is what
    loss and nll log with one row per step and no accumulation (the smoke run's settings). A logged nll
    summed instead of averaged, scaled by the accumulation steps, or not divided by the token count
    breaks the bound; nll is also a cross-entropy, so positive."""
    import math

    import yaml

    from kitrec_fast.testkit.tokenizer import QWEN3_VOCAB_SIZE

    cfg = yaml.safe_load((smoke_run.run_dir / "resolved_config.yaml").read_text())
    eps = cfg["train"]["label_smoothing"]
    assert 0 < eps < 1 and cfg["train"]["gradient_accumulation_steps"] == 1 and cfg["train"]["logging_steps"] == 1
    rows = [r for r in metrics(smoke_run.run_dir) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for r in rows:
        bound = (r["loss"] - eps * math.log(QWEN3_VOCAB_SIZE)) / (1 - eps)
        assert 0 < r["nll"] <= bound + 1e-3, (r["step"], r["nll"], r["loss"], bound)


@pytest.mark.slow
def test_resume_picks_the_newest_checkpoint_and_continues_the_same_data(smoke_run, tmp_path):
    run = _interrupted_copy(smoke_run, tmp_path, keep_step=4)  # checkpoint-2 and checkpoint-4 remain
    proc = subprocess.run(smoke_run.command(run), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"resuming from {run / 'checkpoint-4'}" in proc.stdout
    rows = metrics(run)
    loss_steps = [(r["attempt"], r["step"]) for r in rows if "loss" in r]
    assert loss_steps == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 5), (2, 6)]  # one clean run, no step twice
    # train_loss: the mean over all 6 steps of both attempts (one loss row per step), not the
    # resumed steps' sum over 6 as the Trainer alone computes it
    (final,) = [r for r in rows if "train_loss" in r]
    per_step = [r["loss"] for r in rows if "loss" in r]
    assert final["train_loss"] == pytest.approx(sum(per_step) / 6, rel=1e-4)
    # same data order and state: steps 5 and 6 reproduce the uninterrupted run's losses
    reference = {r["step"]: r["loss"] for r in metrics(smoke_run.run_dir) if "loss" in r}
    for r in rows:
        if r["attempt"] == 2 and "loss" in r:
            assert r["loss"] == pytest.approx(reference[r["step"]], rel=1e-5), r["step"]
    # what the first attempt logged after checkpoint-4 moved aside, tagged by attempt
    abandoned = [json.loads(line) for line in (run / "metrics.abandoned.jsonl").read_text().splitlines()]
    assert [r["step"] for r in abandoned if "loss" in r] == [5, 6]
    assert any("train_runtime" in r for r in abandoned) and {r["attempt"] for r in abandoned} == {1}
    attempts = json.loads((run / "attempts.json").read_text())
    assert [a["resumed_from"] for a in attempts] == [None, "checkpoint-4"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 6 and summary["attempts"] == 2
    assert summary["wall_seconds"] == pytest.approx(attempts[0]["wall_seconds"] + attempts[1]["wall_seconds"], abs=0.2)


def test_finished_run_rerun_says_nothing_to_do_or_that_the_config_differs(smoke_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(smoke_run.run_dir, run)
    config = (run / "resolved_config.yaml").read_text()
    same = subprocess.run(smoke_run.command(run), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert same.returncode == 0 and "finished run" in same.stdout and "nothing to do" in same.stdout
    changed = subprocess.run(smoke_run.command(run, "train.learning_rate=1e-3"), cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
    assert changed.returncode == 2, changed.stdout[-2000:]
    assert "finished run trained with other settings" in changed.stderr
    assert "train.learning_rate: 0.0002 -> 0.001" in changed.stderr and "Traceback" not in changed.stderr
    assert (run / "resolved_config.yaml").read_text() == config
    assert not (run / "checkpoint-7").exists()


def _adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.mark.slow
def test_a_run_whose_schedule_ended_is_finished_without_training_a_step(smoke_run, tmp_path):
    """Ctrl-C after the last step's checkpoint (summary "interrupted", no adapter, no plots): the
    rerun writes what is missing and trains nothing. A kill while it writes them leaves the attempt
    unfinished (it is recorded as killed by the next start), and the next rerun completes it."""
    from kitrec_fast.faults import ENV

    run = tmp_path / "run"
    shutil.copytree(smoke_run.run_dir, run)
    for name in ("summary.json", "loss_curves.png"):
        (run / name).unlink()
    shutil.rmtree(run / "adapter")
    (run / "summary.json").write_text(json.dumps({"status": "interrupted", "interrupted": "SIGINT", "global_step": 6}))
    attempts = json.loads((run / "attempts.json").read_text())
    attempts[0]["outcome"] = "interrupted"
    (run / "attempts.json").write_text(json.dumps(attempts))
    rows_before = metrics(run)

    killed = subprocess.run(smoke_run.command(run), cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, ENV: "kill:results=1"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    assert "finishing" in killed.stdout and "checkpoint-6 is the end of its schedule" in killed.stdout
    assert [a["outcome"] for a in json.loads((run / "attempts.json").read_text())] == ["interrupted", "running"]
    assert not (run / "summary.json").read_text().count('"finished"')

    proc = subprocess.run(smoke_run.command(run), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resuming from" not in proc.stdout and "attempt 2 was killed" in " ".join(proc.stdout.split())
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert metrics(run) == rows_before  # not a step trained, nothing logged or moved aside
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["global_step"] == summary["max_steps"] == 6
    assert summary["attempts"] == 3
    attempts = json.loads((run / "attempts.json").read_text())
    assert [a["outcome"] for a in attempts] == ["interrupted", "killed", "finished"]
    assert [a["resumed_from"] for a in attempts] == [None, "checkpoint-6", "checkpoint-6"]
    assert attempts[1]["started_at"] <= attempts[1]["last_seen_alive"] <= attempts[2]["started_at"]
    assert (run / "loss_curves.png").is_file() and "Interrupted" not in (run / "README.md").read_text()
    # no evaluation in this run: the final adapter is the last checkpoint's, as the uninterrupted run wrote it
    got, want = _adapter_tensors(run / "adapter"), _adapter_tensors(smoke_run.run_dir / "adapter")
    assert got.keys() == want.keys() and all(torch_equal(got[k], want[k]) for k in got)
    log = (run / "train.log").read_text()
    assert [line.split(",")[0] for line in log.splitlines() if line.startswith("===== attempt ")] == [
        "===== attempt 1", "===== attempt 2", "===== attempt 3"]
    assert "attempt 2 was killed" in " ".join(log.split()) and "finishing" in log


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


@pytest.mark.slow
def test_resume_with_changed_training_settings_is_refused_unless_accepted(smoke_run, tmp_path):
    run = _interrupted_copy(smoke_run, tmp_path, keep_step=4)
    config = (run / "resolved_config.yaml").read_text()
    for extra, change in ((["train.learning_rate=1e-3"], "train.learning_rate: 0.0002 -> 0.001"),
                          (["train.per_device_batch_size=1"], "train.effective_batch_size: 2 -> 1")):
        proc = subprocess.run(smoke_run.command(run, *extra), cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stdout[-2000:]
        assert change in proc.stderr and "--accept-config-change" in proc.stderr and "Traceback" not in proc.stderr
        assert (run / "resolved_config.yaml").read_text() == config  # the run's claims are untouched
    proc = subprocess.run(smoke_run.command(run, "train.learning_rate=1e-3", "--accept-config-change"), cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    attempts = json.loads((run / "attempts.json").read_text())
    assert attempts[-1]["accepted_config_changes"] == {"train.learning_rate": [0.0002, 0.001]}
    assert "learning_rate: 0.001" in (run / "resolved_config.yaml").read_text()


def _tree(run: Path) -> dict:
    """Every file of a run directory with its bytes: what a refused or failed rerun must leave alone."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_change_no_checkpoint_can_hold_is_refused_up_front_even_when_accepted(smoke_run, tmp_path):
    run = _interrupted_copy(smoke_run, tmp_path, keep_step=4)
    before = _tree(run)
    for extra, change in ((["lora.r=8"], "lora.r: 32 -> 8"), (["model.load_in_4bit=false"],
                                                            "model.load_in_4bit: True -> False")):
        proc = subprocess.run(smoke_run.command(run, *extra, "--accept-config-change"), cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
        err = " ".join(proc.stderr.split())
        assert err.startswith("error: ") and "cannot take these changes" in err and change in err, err
        assert "Traceback" not in proc.stderr and "prepared in" not in proc.stdout  # before data and model
        assert _tree(run) == before
    # what a checkpoint does hold stays accepted (the scale, dropout, learning rate; AdamW fused or not)
    from kitrec_fast.artifacts.rundir import changes_no_checkpoint_holds

    held = {"lora.alpha": (64, 16), "lora.dropout": (0.08, 0.0), "train.learning_rate": (2e-4, 1e-3),
            "train.optim": ("adamw_torch", "adamw_torch_fused"), "lora.target_modules": (["q_proj", "v_proj"],
                                                                                       ["v_proj", "q_proj"])}
    assert changes_no_checkpoint_holds(held) == {}
    assert changes_no_checkpoint_holds({"train.optim": ("adamw_torch", "adafactor")}) != {}


@pytest.mark.slow
def test_a_resume_that_cannot_load_its_checkpoint_changes_nothing_in_the_run_directory(smoke_run, tmp_path):
    # the state an earlier version left behind: resolved_config.yaml says r 8, checkpoint-4 holds rank 32
    run = _interrupted_copy(smoke_run, tmp_path, keep_step=4)
    config = run / "resolved_config.yaml"
    config.write_text(config.read_text().replace("  r: 32\n", "  r: 8\n", 1))
    before = _tree(run)
    proc = subprocess.run(smoke_run.command(run, "lora.r=8"), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    err = " ".join(proc.stderr.split())
    err = err[err.find("error: "):]  # after upstream's loading bars
    expected = f"error: {run / 'checkpoint-4'} does not fit the model these settings build (size mismatch for "
    assert err.startswith(expected) and "nothing in" in err and err.count("error: ") == 1, err
    assert "Traceback" not in proc.stderr
    assert _tree(run) == before  # attempts.json, metrics, config: as they were


# --- interrupts ---


def _wait_for_step(proc, run: Path, step: int, attempt: int = 1, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").is_file() and any(r.get("step", 0) >= step and "loss" in r
                                                     and r.get("attempt") == attempt for r in metrics(run)):
            return
        time.sleep(0.2)
    raise AssertionError(f"no step {step} logged (exit {proc.poll()})")


@pytest.mark.slow
def test_ctrl_c_once_checkpoints_and_exits_130_twice_aborts_cleanly(tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "kitrec_fast.recipes.dualft_music", "--smoke", "--backend", "peft",
            "--output-dir", str(run), *FAST, "data.val_fraction=0", "train.max_steps=200",
            "train.gradient_accumulation_steps=1", "train.save_steps=100", "train.eval_steps=100"]
    # twice: abort at once, no traceback, no checkpoint written
    returncode, out = _ctrl_c_twice(args, run, step=1, attempt=1)
    assert returncode == 130, out[-3000:]
    assert "Press Ctrl-C again to abort without saving" in out and "SIGINT again: aborting now" in out
    assert "error: aborted at step" in out and "Traceback" not in out
    assert not list(run.glob("checkpoint-*"))

    # once, under `| tee` that the same Ctrl-C ends: stdout and stderr are a pipe whose reader is
    # gone when the signal comes. The notice, a checkpoint after the current step, exit 130, the card
    # says interrupted; what the console showed is in the run's train.log.
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(args, cwd=ROOT, stdout=write_end, stderr=write_end)
    os.close(write_end)
    stop = threading.Event()
    reader = threading.Thread(target=_drain, args=(read_end, stop), daemon=True)
    reader.start()
    _wait_for_step(proc, run, 1, attempt=2)
    # the same command again while this one trains: refused at once, naming the holder
    second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert second.returncode == 2 and len(errors) == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
    assert f"--output-dir {run} is in use by another training run (pid {proc.pid} on {socket.gethostname()}, " \
           "started 20" in errors[0], errors[0]
    stop.set()
    reader.join(timeout=30)
    os.close(read_end)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=300)
    out = (run / "train.log").read_text()
    assert proc.returncode == 130, out[-3000:]
    notice = out.index("SIGINT: finishing the current step, then writing a checkpoint")
    assert notice < out.index("checkpoint written at step")
    summary = json.loads((run / "summary.json").read_text())
    stopped = summary["global_step"]
    assert summary["status"] == "interrupted" and summary["interrupted"] == "SIGINT" and 1 <= stopped < 200
    assert (run / f"checkpoint-{stopped}" / "trainer_state.json").is_file() and not (run / "adapter").exists()
    card = (run / "README.md").read_text()
    assert "KitREC LoRA adapter" in card and f"**Interrupted** at step {stopped} of 200" in card
    assert [r["step"] for r in metrics(run) if "loss" in r] == list(range(1, stopped + 1))  # each step once
    # the aborted first attempt's rows went aside when the second started from scratch
    assert {r["attempt"] for r in metrics(run)} == {2}
    abandoned = (run / "metrics.abandoned.jsonl").read_text().splitlines()
    assert abandoned and all(json.loads(line)["attempt"] == 1 for line in abandoned)
    assert [a["outcome"] for a in json.loads((run / "attempts.json").read_text())] == ["aborted", "interrupted"]

    # twice after a checkpoint: the card no longer claims the state of that checkpoint's attempt
    returncode, out = _ctrl_c_twice(args, run, step=stopped + 1, attempt=3)
    assert returncode == 130 and "SIGINT again: aborting now" in out, out[-3000:]
    card = (run / "README.md").read_text()
    assert "**Aborted** at step" in card and f"resume from checkpoint-{stopped}." in card
    assert "Interrupted" not in card and "In progress" not in card


def _drain(fd: int, stop: threading.Event) -> None:
    """Read a pipe until ``stop`` is set (then its reader goes away, as tee ended by Ctrl-C does)."""
    import select

    while not stop.is_set():
        if select.select([fd], [], [], 0.1)[0] and not os.read(fd, 1 << 16):
            return


def _ctrl_c_twice(args: list[str], run: Path, step: int, attempt: int) -> tuple[int, str]:
    """Start training, press Ctrl-C twice once ``step`` of ``attempt`` is logged. The second press is
    sent once the first one's notice is out: two signals that arrive while the main thread is inside
    one long C call reach Python's handler as one."""
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    _wait_for_step(proc, run, step, attempt=attempt)
    proc.send_signal(signal.SIGINT)
    deadline = time.time() + 120
    while time.time() < deadline and not any("Press Ctrl-C again" in line for line in lines):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=300)
    reader.join(timeout=30)
    return proc.returncode, "".join(lines)


# --- bad input under `train` ---


def _sample_rows(n: int) -> list[dict]:
    import gzip

    path = ROOT / "kitrec_fast/data/sample/dualft_music.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


@pytest.mark.slow
def test_bad_data_under_train_is_a_clean_error_and_leaves_no_run_directory(tmp_path):
    rows = _sample_rows(8)
    malformed = tmp_path / "malformed.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines[4] = lines[4][:50]  # file line 5 cut short
    malformed.write_text("\n".join(lines) + "\n")
    missing_field = tmp_path / "missing_field.jsonl"
    del rows[6]["user_id"]
    missing_field.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for dataset, says in ((malformed, "row 5 (1-based; the file line for JSONL)"), (missing_field, "user_id"),
                          (tmp_path / "absent.jsonl", "file not found")):
        run = tmp_path / f"run-{dataset.stem}"
        proc = subprocess.run([sys.executable, "-m", "kitrec_fast", "train", "dualft_music", "--smoke", "--backend",
                               "peft", "--dataset", str(dataset), "--output-dir", str(run)],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and says in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("error: ")  # one line, after any library noise
        assert not run.exists()  # nothing half-written that a rerun would trust
    debug = subprocess.run([sys.executable, "-m", "kitrec_fast", "train", "dualft_music", "--smoke", "--backend",
                            "peft", "--dataset", str(tmp_path / "absent.jsonl"), "--debug"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "file not found" in debug.stderr


def test_no_gpu_message_is_one_line_with_every_option(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    proc = subprocess.run([sys.executable, "-m", "kitrec_fast.recipes.dualft_music", "--backend", "peft",
                           "--output-dir", str(tmp_path / "x"), "train.learning_rate=1e-4"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    line = next(line for line in proc.stderr.splitlines() if "No CUDA GPU" in line)
    assert line.endswith(f"python -m kitrec_fast.recipes.dualft_music --backend peft --output-dir "
                         f"{tmp_path / 'x'} train.learning_rate=1e-4 --smoke")
    assert not (tmp_path / "x").exists()
    # the dry run's note too: one line however long the command (the console wraps at 160 columns)
    proc = subprocess.run([sys.executable, "-m", "kitrec_fast", "train", "singleft_movies", "--set", "B",
                           "--max-steps", "50", "--output-dir", str(tmp_path / "a-rather-long-output-directory-name"),
                           "train.learning_rate=1e-4", "data.max_length=4096", "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(line for line in proc.stdout.splitlines() if "No CUDA GPU" in line)
    assert line.endswith("train.learning_rate=1e-4 data.max_length=4096 --dry-run --smoke")


# --- what the Trainer is really given ---


@pytest.mark.parametrize("backend", ["unsloth", "peft"])
def test_accumulated_batch_matches_full_batch_and_neftune_is_training_only(backend):
    out = trainer_checks(backend)["accumulation"]
    # 4 micro-batches of 1 with accumulation 4 == one micro-batch of 4: the loss is normalised
    # once, over all tokens of the accumulated batch (a second division by 4 gives ratio 0.25)
    assert out["same_keys"] and out["n_grads"] > 0
    assert out["grad_norm_ratio"] == pytest.approx(1.0, abs=1e-2)
    assert out["max_rel_grad_diff"] < 1e-2
    assert out["loss_accumulated"] == pytest.approx(out["loss_full_batch"], rel=1e-4)
    # NEFTune: uniform noise of magnitude alpha / sqrt(L * d) in training; none in evaluation
    nef = trainer_checks(backend)["neftune"]
    assert nef["alpha"] == 5 and nef["train_calls"] >= 1 and nef["eval_calls"] >= 1
    assert all(0.9 < r <= 1.0 + 1e-4 for r in nef["train_noise_over_bound"]), nef
    assert nef["eval_max_noise"] == 0.0


@pytest.mark.parametrize("backend", ["unsloth", "peft"])
def test_compute_loss_runs_under_the_trainers_autocast(backend):
    # fp32 weights, use_cpu + bf16: accelerate's autocast wraps only the prepared model's forward.
    # A loss that calls the inner decoder directly runs it in fp32 (LoRA outputs float32).
    out = trainer_checks(backend)["autocast"]
    if not out["bf16"]:
        pytest.skip("this CPU has no bf16 support (Unsloth's CPU backend turned bf16 off)")
    assert out["steps"] == 1 and out["loss_path"] == "chunked" and len(out["losses"]) == 1
    assert out["lora_weight"] == "float32"  # so bf16 outputs can only come from autocast
    assert out["in_compute_loss"] and all(out["in_compute_loss"])
    assert out["layer_autocast"] and all(out["layer_autocast"]), out
    assert out["lora_out"] and set(out["lora_out"]) == {"bfloat16"}, out
    facts = out["facts"]
    assert facts["autocast"] is True and facts["activation_dtype"] == "bfloat16"
    assert facts["world_size"] == 1 and facts["attn_implementation"]
    # CPU: nothing is fused (Unsloth's CPU backend is stock transformers + PEFT)
    assert facts["fused_lora_kernels"] == (0 if backend == "unsloth" else None)


@pytest.mark.slow
def test_4bit_lora_gradients_are_summed_in_bf16_so_their_order_moves_them_by_bf16_rounding(record_property):
    # TRL's SFTTrainer casts a quantized model's LoRA weights to bf16 (the QLoRA paper's choice), so
    # each micro-batch's gradient is added into a bf16 .grad and DDP all-reduces bf16 tensors. The same
    # 4 micro-batches summed as 4 in one process or as 2 + 2 (two ranks, then the all-reduce) differ
    # by bf16 rounding (spacing 2^-8 relative): the ~0.3% gap between a two-process and a one-process
    # 4-bit run (tests/test_ddp.py), which is therefore no data-parallel error. With the LoRA weights in
    # fp32 the same regrouping is float32 rounding, as in the fp32 data-parallel test (tolerance 1e-4).
    out = trainer_checks("peft")["accumulation_order"]
    record_property("accumulation_order", out)
    assert out["trained_dtype"] == "bfloat16" and out["trained"]["dtype"] == "torch.bfloat16"
    assert 1e-3 < out["trained"]["median"] and out["trained"]["worst"] < 2 ** -6
    assert out["float32"]["worst"] < 1e-6


# The SPEC table (docs: /SPEC.md "Hyperparameters"), as the Trainer must receive it.
SPEC_TRAINER = {
    "dualft": dict(learning_rate=2e-4, warmup_steps=0.05, weight_decay=0.02, num_train_epochs=3,
                   label_smoothing=0.05, neftune_noise_alpha=5.0, eval_steps=200, save_steps=200),
    "singleft": dict(learning_rate=6e-5, warmup_steps=0.1, weight_decay=0.05, num_train_epochs=6,
                     label_smoothing=0.1, neftune_noise_alpha=3.0, eval_steps=50, save_steps=100),
}


@pytest.mark.slow
def test_every_recipe_builds_the_spec_trainer_arguments_and_dualft_plans_1014_steps():
    proc = subprocess.run([sys.executable, str(ROOT / "tests/scripts/trainer_args.py")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["sft"]) == 8
    for name, args in out["sft"].items():
        spec = SPEC_TRAINER[name.split("_")[0]]
        assert args["learning_rate"] == pytest.approx(spec["learning_rate"]), name
        assert args["warmup_steps"] == spec["warmup_steps"], name  # < 1: a ratio of the total steps
        assert args["weight_decay"] == spec["weight_decay"], name
        assert args["num_train_epochs"] == spec["num_train_epochs"] and args["max_steps"] == -1, name
        assert args["neftune_noise_alpha"] == spec["neftune_noise_alpha"], name
        assert (args["eval_steps"], args["save_steps"], args["save_total_limit"]) == \
            (spec["eval_steps"], spec["save_steps"], 3), name
        assert (args["per_device_train_batch_size"], args["gradient_accumulation_steps"]) == (2, 16), name
        assert args["lr_scheduler_type"] == "cosine" and args["optim"] == "adamw_torch_fused", name
        assert (args["max_grad_norm"], args["seed"], args["data_seed"]) == (1.0, 42, 42), name
        assert args["load_best_model_at_end"] and args["metric_for_best_model"] == "eval_loss", name
        assert args["greater_is_better"] is False and args["eval_strategy"] == "steps", name
        # smoothing lives in the project's loss, not the Trainer's (which would build full logits)
        assert args["label_smoothing_factor"] == 0.0 and args["loss_path"] == "chunked", name
        assert args["loss_label_smoothing"] == spec["label_smoothing"], name
    # 10,800 training rows / (2 x 16) = 337.5 -> 338 optimizer steps per epoch (the last one
    # partial), x 3 epochs = 1,014: the recorded DualFT run.
    assert out["dualft_steps"] == 1014


def test_trainable_parameters_at_r32_on_qwen3_14b_geometry():
    """128.45M: r x (in + out) per adapted projection, 7 projections, 40 layers (SPEC)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen3Config

    from kitrec_fast.config import config_from_dict
    from kitrec_fast.recipes import load_recipe

    cfg = config_from_dict(load_recipe("dualft_music_seta"))
    geometry = Qwen3Config(hidden_size=5120, intermediate_size=17408, num_hidden_layers=40, num_attention_heads=40,
                           num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(geometry)
    model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                             target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    h, kv, ff = 5120, 8 * 128, 17408
    per_layer_in_plus_out = (h + h) + (h + kv) + (h + kv) + (h + h) + (h + ff) + (h + ff) + (ff + h)
    assert trainable == 32 * per_layer_in_plus_out * 40 == 128_450_560

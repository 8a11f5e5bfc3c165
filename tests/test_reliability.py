"""Runs that survive a kill at any instant and a full disk (kitrec_fast/artifacts/checkpoints.py,
kitrec_fast/faults.py).

The walk: the session's smoke run command (tests/conftest.py: peft backend, tiny model, 6 steps, a
checkpoint and an evaluation every 2) is SIGKILLed at K seeded points (after a step, inside an
evaluation, inside a save), once stopped by an injected ENOSPC, and rerun after each; it must end as
the uninterrupted smoke run ended: every step logged once, the same losses, the same adapter. The cheap checks (a damaged
checkpoint, a torn metrics line, the Trainer's rotation, the disk estimates) use no training.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from kitrec_fast.artifacts import checkpoints, rundir
from kitrec_fast.errors import DiskFullError

MAX_STEPS, EVERY = 6, 2  # the smoke run's train.max_steps and train.save_steps / eval_steps
# One kill of each kind, in a seeded order; every attempt is a ~40-60 s process on CI.
KILL_KINDS = ("step", "eval_batch", "save_file")
KILLS = len(KILL_KINDS)
SEED = 20
# CPU, fp32 weights and states, the same kernels in the same order: a resume restores the weights,
# optimizer moments, scheduler, RNG and data position exactly, so the runs agree to float32 rounding.
# 1e-6 sits far above that (~1e-9 on weights of ~1e-2) and far below what one skipped or repeated
# optimizer step moves a LoRA weight (lr 2e-4 Adam: ~2e-4 per step).
ADAPTER_ATOL = 1e-6
LOSS_ATOL = 1e-6


def _attempt(smoke_run, out: Path, log: Path, fault: str | None) -> tuple[int, float]:
    env = {k: v for k, v in os.environ.items() if k != "KITREC_FAST_FAULT"}
    if fault:
        env["KITREC_FAST_FAULT"] = fault
    t0 = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.run(smoke_run.command(out), cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env,
                            timeout=900).returncode
    return rc, time.perf_counter() - t0


def _complete_steps(run: Path) -> list[int]:
    """Steps of the checkpoints a resume can use, checked by an independent reader (safetensors +
    torch.load), not by the code under test."""
    from safetensors.torch import load_file
    import torch

    good = []
    for state in run.glob("checkpoint-*/trainer_state.json"):
        ckpt = state.parent
        try:
            load_file(str(ckpt / "adapter_model.safetensors"))
            for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
                torch.load(str(ckpt / name), weights_only=False)
        except Exception:
            continue
        good.append(int(json.loads(state.read_text())["global_step"]))
    return sorted(good)


def _train_rows(run: Path) -> list[dict]:
    return [r for r in rundir.read_metrics(run) if "loss" in r and "eval_loss" not in r and "train_runtime" not in r]


def _eval_rows(run: Path) -> list[dict]:
    return [r for r in rundir.read_metrics(run) if "eval_loss" in r]


def _adapter(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def walk(smoke_run, tmp_path_factory):
    """The smoke run's command killed at KILLS seeded points and stopped once by ENOSPC, rerun after
    each until it finishes; the session's smoke run is the uninterrupted reference."""
    assert smoke_run.args[smoke_run.args.index("--backend") + 1] == "peft"
    assert {f"train.max_steps={MAX_STEPS}", f"train.save_steps={EVERY}", f"train.eval_steps={EVERY}"} <= set(smoke_run.args)
    base = tmp_path_factory.mktemp("walk")
    ref, run, logs = smoke_run.run_dir, base / "run", base / "logs"
    logs.mkdir()
    t0 = time.perf_counter()
    summary = json.loads((ref / "summary.json").read_text())
    assert summary["val_rows"] > 0 and summary["global_step"] == MAX_STEPS
    eval_batches = -(-summary["val_rows"] // 2)  # per_device_batch_size 2
    files_per_save = sum(1 for p in (ref / f"checkpoint-{MAX_STEPS}").rglob("*") if p.is_file())

    rng = random.Random(SEED)
    kinds = list(KILL_KINDS)
    rng.shuffle(kinds)
    enospc_at = rng.randrange(1, KILLS)  # which attempt is stopped by a full disk instead
    attempts = []
    for i, kind in enumerate(kinds[:enospc_at] + ["enospc"] + kinds[enospc_at:]):
        done = max(_complete_steps(run), default=0) if run.exists() else 0
        saves_left = (MAX_STEPS - done) // EVERY
        if kind == "step":
            fault = f"kill:step={rng.randint(done + 1, MAX_STEPS)}"
        elif kind == "eval_batch":
            fault = f"kill:eval_batch={rng.randint(1, eval_batches * saves_left)}"
        elif kind == "save_file":
            fault = f"kill:save_file={rng.randint(1, files_per_save * saves_left)}"
        else:
            fault = f"enospc:save_file={rng.randint(1, files_per_save * saves_left)}"
        log = logs / f"attempt{i + 1}.log"
        rc, seconds = _attempt(smoke_run, run, log, fault)
        attempts.append({"fault": fault, "rc": rc, "resumed_from": done, "log": log, "seconds": seconds,
                         "complete_after": _complete_steps(run) if run.exists() else [],
                         "folders_after": sorted(p.name for p in run.glob("checkpoint-*"))})
    done = max(_complete_steps(run), default=0)
    rc, seconds = _attempt(smoke_run, run, logs / "final.log", None)
    attempts.append({"fault": None, "rc": rc, "resumed_from": done, "log": logs / "final.log", "seconds": seconds})
    wall = time.perf_counter() - t0
    print(f"\nfault walk: {len(attempts)} attempts "
          f"{sum(a['seconds'] for a in attempts):.0f}s, total {wall:.0f}s; "
          + ", ".join(f"{a['fault']}->{a['rc']}" for a in attempts))
    return {"ref": ref, "run": run, "attempts": attempts}


@pytest.mark.slow
def test_every_kill_resumes_and_the_run_completes(walk):
    attempts = walk["attempts"]
    kills = [a for a in attempts if a["fault"] and a["fault"].startswith("kill:")]
    assert len(kills) >= KILLS
    for a in kills:
        assert a["rc"] == -signal.SIGKILL, f"{a['fault']} did not kill the run:\n{a['log'].read_text()[-3000:]}"
    final = attempts[-1]
    assert final["rc"] == 0, final["log"].read_text()[-4000:]
    run = walk["run"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == MAX_STEPS and summary["status"] == "finished"
    assert summary["attempts"] == len(attempts)
    # A kill never leaves a checkpoint a resume cannot load, nor an unfinished save behind.
    assert not (run / checkpoints.BROKEN).exists()
    assert not (run / checkpoints.STAGING).exists()
    for a in attempts[1:]:
        resumed = [ln.strip() for ln in a["log"].read_text().splitlines() if "resuming from" in ln]
        if a["resumed_from"]:  # the newest complete checkpoint at the time, as an independent reader saw it
            assert resumed and resumed[0].endswith(f"/checkpoint-{a['resumed_from']}"), (a["fault"], resumed)
        else:
            assert not resumed, (a["fault"], resumed)
    saves_cut = [a for a in kills if "save_file" in a["fault"]]
    assert saves_cut, "no kill landed inside a save"


@pytest.mark.slow
def test_metrics_hold_every_step_once_with_the_uninterrupted_losses(walk):
    ref, run = walk["ref"], walk["run"]
    steps = [r["step"] for r in _train_rows(run)]
    assert steps == list(range(1, MAX_STEPS + 1)), steps
    assert [r["step"] for r in _eval_rows(run)] == list(range(EVERY, MAX_STEPS + 1, EVERY))
    for key, rows in (("loss", _train_rows), ("eval_loss", _eval_rows)):
        got, want = [r[key] for r in rows(run)], [r[key] for r in rows(ref)]
        worst = max(abs(g - w) for g, w in zip(got, want))
        print(f"\n{key}: max |diff| {worst:.3g} over {len(got)} rows")
        assert worst <= LOSS_ATOL, (key, got, want)


@pytest.mark.slow
def test_final_adapter_equals_the_uninterrupted_one(walk):
    import torch

    ref, got = _adapter(walk["ref"]), _adapter(walk["run"])
    assert ref.keys() == got.keys()
    worst = max(float((ref[k] - got[k]).abs().max()) for k in ref)
    print(f"\nadapter max |diff| after the walk: {worst:.3g}")
    assert worst <= ADAPTER_ATOL
    # the tolerance is meaningful: training moved the weights far more than it
    assert max(float(ref[k].abs().max()) for k in ref if "lora_B" in k) > 100 * ADAPTER_ATOL
    assert all(torch.isfinite(t).all() for t in got.values())


@pytest.mark.slow
def test_enospc_in_a_save_stops_with_one_line_and_exit_74(walk):
    (a,) = [a for a in walk["attempts"] if a["fault"] and a["fault"].startswith("enospc")]
    assert a["rc"] == DiskFullError.exit_code == 74, a["log"].read_text()[-3000:]
    lines = [ln for ln in a["log"].read_text().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in a["log"].read_text(), a["log"].read_text()[-3000:]
    assert "disk full while writing checkpoint-" in lines[0] and "needed about" in lines[0] and "free" in lines[0]
    failed = int(lines[0].split("disk full while writing checkpoint-")[1].split()[0])
    # the save that failed left nothing; the checkpoint before it is whole and named
    assert failed not in a["complete_after"] and f"checkpoint-{failed}" not in a["folders_after"]
    if a["complete_after"]:
        assert f"checkpoint-{a['complete_after'][-1]} is intact" in lines[0]
        assert a["complete_after"][-1] == failed - EVERY


# -- no training below ---------------------------------------------------------------------------

def _checkpoint_copy(smoke_run, tmp_path) -> Path:
    src = smoke_run.run_dir / "checkpoint-2"
    dst = tmp_path / "run" / "checkpoint-2"
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage, names", [
    ("cut adapter_model.safetensors to 100 bytes", "adapter_model.safetensors"),
    ("cut the last 64 bytes of adapter_model.safetensors", "adapter_model.safetensors"),
    ("cut optimizer.pt in half", "optimizer.pt"),
    ("remove scheduler.pt", "scheduler.pt"),
    ("zero rng_state.pth", "rng_state.pth"),
    ("remove trainer_state.json", "trainer_state.json"),
])
def test_a_damaged_checkpoint_is_named_and_an_intact_one_passes(smoke_run, tmp_path, damage, names):
    ckpt = _checkpoint_copy(smoke_run, tmp_path)
    assert checkpoints.check_checkpoint(ckpt) is None
    path = ckpt / names
    if damage.startswith("remove"):
        path.unlink()
    elif damage.startswith("zero"):
        path.write_bytes(b"\0" * path.stat().st_size)
    elif "100 bytes" in damage:
        os.truncate(path, 100)
    elif "last 64" in damage:
        os.truncate(path, path.stat().st_size - 64)
    else:
        os.truncate(path, path.stat().st_size // 2)
    problem = checkpoints.check_checkpoint(ckpt)
    assert problem is not None and names in problem, (damage, problem)


def test_resume_skips_broken_checkpoints_and_sets_them_aside(smoke_run, tmp_path):
    run = tmp_path / "run"
    for step in (2, 4, 6):
        shutil.copytree(smoke_run.run_dir / f"checkpoint-{step}", run / f"checkpoint-{step}")
    os.truncate(run / "checkpoint-6" / "adapter_model.safetensors", 100)
    (run / "checkpoint-4" / "optimizer.pt").unlink()
    (run / checkpoints.STAGING / "checkpoint-8").mkdir(parents=True)
    point = checkpoints.find_resume(run)
    assert point.checkpoint == run / "checkpoint-2"
    assert [p.name for p, _ in point.skipped] == ["checkpoint-6", "checkpoint-4"]
    notes = point.notices()
    assert "checkpoint-6" in notes[0] and "adapter_model.safetensors" in notes[0] and "broken/checkpoint-6" in notes[0]
    assert "optimizer.pt missing" in notes[1]
    checkpoints.clear_for_resume(run, point)
    assert sorted(p.name for p in (run / "broken").iterdir()) == ["checkpoint-4", "checkpoint-6"]
    assert (run / "broken" / "checkpoint-6" / "adapter_model.safetensors").stat().st_size == 100  # kept as found
    assert not (run / checkpoints.STAGING / "checkpoint-8").exists()
    assert rundir.last_checkpoint(run) == run / "checkpoint-2"


def test_staging_and_broken_folders_are_invisible_to_the_trainers_rotation(tmp_path):
    """transformers' own checkpoint listing and rotation (save_total_limit) must neither count nor
    delete a save in progress or a folder set aside."""
    from transformers.trainer_utils import get_last_checkpoint, rotate_checkpoints, sort_checkpoints

    run = tmp_path / "run"
    for step in (2, 4):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        time.sleep(0.01)
    staged = checkpoints.staging_path(run, "checkpoint-6")
    aside = run / checkpoints.BROKEN / "checkpoint-8"
    for folder in (staged, aside):
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"x")
    assert [Path(p).name for p in sort_checkpoints(str(run))] == ["checkpoint-2", "checkpoint-4"]
    assert Path(get_last_checkpoint(str(run))).name == "checkpoint-4"
    rotate_checkpoints(str(run), save_total_limit=1)
    assert staged.is_dir() and aside.is_dir() and (run / "checkpoint-4").is_dir()
    assert not (run / "checkpoint-2").exists()


def test_torn_metrics_line_is_dropped_with_a_notice(tmp_path):
    rows = [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.25}]
    path = tmp_path / rundir.METRICS
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "lo')
    assert rundir.read_metrics(tmp_path) == rows  # a reader never parses the torn piece
    notice = rundir.drop_torn_metrics(tmp_path)
    assert notice and "torn last line" in notice and "15 bytes" in notice
    # the resumed attempt's rows then start on a line of their own
    with path.open("a") as fh:
        fh.write(json.dumps({"step": 3, "loss": 2.0}) + "\n")
    assert [r["step"] for r in rundir.read_metrics(tmp_path)] == [1, 2, 3]
    assert rundir.drop_torn_metrics(tmp_path) is None
    # a whole last row whose newline was lost is kept, silently
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1]))
    assert rundir.drop_torn_metrics(tmp_path) is None and path.read_text().endswith("\n")
    assert rundir.read_metrics(tmp_path) == rows


def test_damage_before_the_last_metrics_line_is_an_error(tmp_path):
    from kitrec_fast.errors import UserError

    (tmp_path / rundir.METRICS).write_text('{"step": 1}\n{"st\n{"step": 2}\n')
    with pytest.raises(UserError, match="line 2 is damaged"):
        rundir.drop_torn_metrics(tmp_path)


# -- disk space ---------------------------------------------------------------------------------

@pytest.fixture
def small_disk(monkeypatch):
    """The disk checks see ``n`` free bytes (KITREC_FAST_FAULT=disk_free=n)."""
    from kitrec_fast import faults

    def set_free(n: int):
        monkeypatch.setenv(faults.ENV, f"disk_free={n}")
        faults._spec.cache_clear()

    yield set_free
    monkeypatch.delenv(faults.ENV, raising=False)
    faults._spec.cache_clear()


def test_run_estimate_matches_what_the_smoke_run_wrote(smoke_run, small_disk):
    """The estimate, made from the loaded model as the run makes it, against the files the same
    configuration really wrote (the smoke run): adapter and optimizer state to their header slack,
    every checkpoint folder within the per-checkpoint allowance."""
    from kitrec_fast.artifacts.diskspace import SMALL_FILES, check_run_space, estimate_run
    from kitrec_fast.backends import get_backend

    cfg = rundir.read_resolved_config(smoke_run.run_dir)
    summary = json.loads((smoke_run.run_dir / "summary.json").read_text())
    model = get_backend("peft").load_model(cfg).model
    est = estimate_run(model, cfg, smoke_run.run_dir / "missing", summary["train_rows"])
    ckpts = checkpoints.checkpoint_dirs(smoke_run.run_dir)
    for ckpt in ckpts:
        adapter = (ckpt / "adapter_model.safetensors").stat().st_size
        optimizer = (ckpt / "optimizer.pt").stat().st_size
        assert est.adapter <= adapter <= est.adapter + 16 * 1024, (est.adapter, adapter)
        assert est.optimizer <= optimizer <= est.optimizer * 1.15 + 16 * 1024, (est.optimizer, optimizer)
        assert checkpoints.dir_bytes(ckpt) <= est.checkpoint <= checkpoints.dir_bytes(ckpt) + SMALL_FILES
    assert est.checkpoints >= len(ckpts) == 3
    written = checkpoints.dir_bytes(smoke_run.run_dir)
    assert written <= est.total, (written, est.total)
    # refused with the numbers when the disk cannot hold it; accepted when it can
    small_disk(est.total - 1)
    with pytest.raises(DiskFullError) as info:
        check_run_space(model, cfg, smoke_run.run_dir / "new", summary["train_rows"])
    msg = str(info.value)
    assert checkpoints.gb(est.total) in msg and checkpoints.gb(est.total - 1) + " free" in msg
    assert "3 checkpoint(s)" in msg and "set train.save_total_limit=1 (now 3: up to 3 of the 3 planned" in msg
    # the parts the message names add up to the checkpoint and adapter sizes it states
    import re

    parts = re.search(r"checkpoint\(s\) of ([0-9.]+) MB \(adapter ([0-9.]+) MB \+ optimizer state ([0-9.]+) MB \+ "
                      r"[a-z ]+ up to ([0-9.]+) MB\)", msg)
    assert parts, msg
    sizes = [float(x) for x in parts.groups()]
    assert sizes[0] == pytest.approx(sum(sizes[1:]), abs=0.15), (sizes, msg)
    final = re.search(r"final adapter of ([0-9.]+) MB \(adapter ([0-9.]+) MB \+ [a-z ]+ up to ([0-9.]+) MB\)", msg)
    assert final and float(final[1]) == pytest.approx(float(final[2]) + float(final[3]), abs=0.15), msg
    # two checkpoints planned: fewer kept at once would not help, so it is not suggested
    two = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, save_steps=4))  # 6 steps: 2 saves
    small_disk(estimate_run(model, two, smoke_run.run_dir / "new", summary["train_rows"]).total - 1)
    with pytest.raises(DiskFullError) as info:
        check_run_space(model, two, smoke_run.run_dir / "new", summary["train_rows"])
    assert "2 checkpoint(s)" in str(info.value) and "save_total_limit" not in str(info.value), str(info.value)
    small_disk(est.total)
    check_run_space(model, cfg, smoke_run.run_dir / "new", summary["train_rows"])
    # a resumed run needs only what its checkpoints do not already take
    assert estimate_run(model, cfg, smoke_run.run_dir, summary["train_rows"]).held == sum(
        checkpoints.dir_bytes(c) for c in ckpts)


def test_export_refuses_a_disk_too_small_for_the_merged_model(smoke_run, small_disk, tmp_path):
    from safetensors import safe_open

    from kitrec_fast.artifacts.export import base_parameters, export_merged

    env = json.loads((smoke_run.run_dir / "environment.json").read_text())
    with safe_open(str(Path(env["weights"]) / "model.safetensors"), "pt") as f:
        stored = 0
        for key in f.keys():
            n = 1
            for d in f.get_slice(key).get_shape():
                n *= d
            stored += n
    assert base_parameters(env["weights"]) == stored
    small_disk(stored * 2)  # bfloat16 needs 2 bytes a parameter plus the tokenizer
    out = tmp_path / "merged"
    with pytest.raises(DiskFullError, match=r"merged model takes about .* 2 bytes\), .* free"):
        export_merged(smoke_run.run_dir, out)
    assert not out.exists()


def test_what_counts_as_a_full_disk(tmp_path, small_disk):
    import errno

    assert checkpoints.disk_full(OSError(errno.ENOSPC, "No space left on device"))
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert checkpoints.disk_full(wrapped)
    assert not checkpoints.disk_full(OSError(errno.EACCES, "Permission denied"))
    # torch.save's own message carries no errno: a full disk only when the disk is nearly full
    torch_msg = RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing "
                             "file data/3: file write failed")
    small_disk(4096)
    assert checkpoints.disk_full(torch_msg, tmp_path)
    small_disk(10 * 2**30)
    assert not checkpoints.disk_full(torch_msg, tmp_path)

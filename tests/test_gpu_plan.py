"""The GPU lease plan on CPU: phase budgets, what comes back (one archive + one summary), the dry run,
the preflight (inside the dry run) and the wheel-install guard.

The GPU machine returns at most 8 files from its output folder (16 MiB each, 2 folders deep) and a
command may run 10 minutes; these tests check the machinery that keeps a run inside those limits
with real processes (``sleep``), real archives and the real scripts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_phases  # noqa: E402
from gpu_phases import Plan, Step  # noqa: E402

LEASE_COMMAND_S = 600  # one command on the GPU machine


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_phase_plans_fit_the_lease(tmp_path):
    one = gpu_phases.build_plan(1, tmp_path, dry=False)
    names = [s.name for s in one.steps if not s.background]
    assert names == ["preflight", "headline"]
    # the checks run alongside the model build; the timed pair waits for all of them (GPU to itself)
    assert {s.name for s in one.steps if s.background} == {"build-model", "gpu-tests", "parity"}
    # phase 1: under 6 minutes even if every step takes its estimate, so a lease can rerun it once
    assert one.budget_s < 360 and one.estimate_s <= one.budget_s
    # the model build overlaps the checks: the critical path is shorter than the plain sum
    assert one.estimate_s < sum(s.est_s for s in one.steps)
    two = gpu_phases.build_plan(2, tmp_path, dry=False)
    assert two.estimate_s <= two.budget_s < LEASE_COMMAND_S - 30
    # no step may carry a fixed limit past the phase budget (the old --timeout-s 900)
    for plan in (one, two):
        for step in plan.steps:
            for flag in ("--timeout-s", "--budget-s"):
                if flag in step.argv:
                    assert step.argv[step.argv.index(flag) + 1] == "{left}", (step.name, step.argv)
    # the headline pair is the full 40-layer geometry at 2 x 5,120 (the harness's gpu preset), not the tiny model
    head = next(s for s in one.steps if s.name == "headline")
    assert "--phases" in head.argv and head.argv[head.argv.index("--phases") + 1] == "headline"
    assert head.argv[head.argv.index("--model") + 1] == "arch"
    assert set(head.wait_for) == {"build-model", "gpu-tests", "parity"}


def test_runner_keeps_the_budget_and_repacks_after_every_step(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    plan = Plan(1, budget_s=6.0, steps=[
        Step("quick", 1, ["sh", "-c", "echo quick-done; sleep 0.2"], "finishes"),
        # the archive already holds the finished step while the next one runs
        Step("sees-quick", 1, ["sh", "-c", f"tar tzf {out}/{gpu_phases.ARCHIVE} | grep -q logs/quick.log"], "re-packed"),
        Step("runaway", 1, ["sh", "-c", "echo runaway-started; sleep 60"], "killed at the budget"),
        Step("late", 5, ["sh", "-c", "echo late-ran"], "no time left: skipped"),
    ])
    # a check alongside, waited for by the step after "quick"
    plan.steps.insert(0, Step("alongside", 1, ["sh", "-c", "echo alongside-done"], "in the background",
                              background=True))
    plan.steps[2].wait_for = ("alongside",)
    meta = {"device": "test", "slug": "test", "commit": None, "dry": True, "started": "now"}
    rc = gpu_phases.run_plan(plan, work, out, meta, dict(os.environ))
    assert rc == 1
    assert [s.status for s in plan.steps] == ["ok", "ok", "ok", "timeout", "skipped"]
    assert plan.steps[3].wall_s < 8  # killed when the 6 s budget ran out, not after its 60 s
    # the output folder holds exactly the two files, whatever happened
    assert sorted(p.name for p in out.iterdir()) == [gpu_phases.ARCHIVE, gpu_phases.SUMMARY]
    files = _members(out / gpu_phases.ARCHIVE)
    assert b"quick-done" in files["test-phase1/logs/quick.log"]
    assert b"runaway-started" in files["test-phase1/logs/runaway.log"]
    assert b"alongside-done" in files["test-phase1/logs/alongside.log"]
    assert "test-phase1/logs/late.log" not in files
    summary = (out / gpu_phases.SUMMARY).read_text()
    assert "| runaway |" in summary and "timeout" in summary and "budget:" in summary


def test_pack_fits_the_return_limits_and_names_no_machine_path(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "sub" / "deeper").mkdir(parents=True)
    here = str(REPO)
    (work / "row.json").write_text(json.dumps({"model": f"{here}/x", "tmp": f"{tempfile.gettempdir()}/kitrec-1/y",
                                               "py": sys.executable, "home": os.path.expanduser("~/.cache/z")}))
    big = work / "sub" / "big.log"
    big.write_bytes(os.urandom(3 * 2**20))  # incompressible: 3 MiB
    (work / "sub" / "deeper" / "adapter_model.safetensors").write_bytes(b"\0" * 1024)
    (work / "link.json").symlink_to(work / "row.json")
    first = gpu_phases.pack(work, out, "gpu-phase1")
    files = _members(first)
    assert set(files) == {"gpu-phase1/row.json", "gpu-phase1/sub/big.log"}
    row = files["gpu-phase1/row.json"].decode()
    for path in (here, tempfile.gettempdir() + "/", sys.prefix, os.path.expanduser("~") + "/"):
        assert path not in row, path
    assert len(files["gpu-phase1/sub/big.log"]) <= gpu_phases.MAX_LOG_BYTES + 64
    assert first.stat().st_size < gpu_phases.MAX_ARCHIVE_BYTES
    # re-packing replaces the archive in place (no second file, no leftover part file)
    (work / "more.json").write_text("{}")
    gpu_phases.pack(work, out, "gpu-phase1")
    assert sorted(p.name for p in out.iterdir()) == [gpu_phases.ARCHIVE]
    assert "gpu-phase1/more.json" in _members(out / gpu_phases.ARCHIVE)


@pytest.mark.slow
def test_cpu_dry_run_leaves_what_a_gpu_run_leaves(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "benchmarks/gpu/run_all.sh"), "--cpu-dry-run", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == [gpu_phases.ARCHIVE, gpu_phases.SUMMARY]
    summary = (out / gpu_phases.SUMMARY).read_text()
    for name in ("preflight", "gpu-tests", "parity", "headline"):
        assert f"| {name} |" in summary
    assert "estimated" in summary and "parity: ok=True" in summary and "fast path / baseline" in summary
    files = _members(out / gpu_phases.ARCHIVE)
    root = "cpu-dry-run-phase1"
    rows = [json.loads(x) for x in files[f"{root}/headline/results.jsonl"].decode().splitlines()]
    assert [r["backend"] for r in rows] == ["unsloth", "peft"] and all(r["status"] == "ok" for r in rows)
    assert all(r["steps"]["timed"] == 1 for r in rows)
    for r in rows:  # what really ran is recorded on both backends
        assert r["settings"]["activation_dtype"] and r["settings"]["attn_implementation"]
        assert r["settings"]["autocast"] is False and "compile" in r["settings"]
    parity = json.loads(files[f"{root}/parity/parity.json"])
    assert parity["ok"] and parity["identical_batches"] and all(parity["settings"][b]["init_adapter"]
                                                                 for b in ("unsloth", "peft"))
    plan = json.loads(files[f"{root}/plan.json"])
    assert {s["name"]: s["status"] for s in plan["steps"]}["headline"] == "ok"
    # the preflight imports unsloth before unsloth_zoo (the other order raises by design)
    lines = {ln.split()[0]: ln for ln in files[f"{root}/logs/preflight.log"].decode().splitlines() if ln.strip()}
    assert "MISSING" not in lines["unsloth"] and lines["unsloth_zoo"].split()[1][0].isdigit()
    blob = b"".join(files.values()).decode(errors="replace")
    assert str(REPO) not in blob and sys.prefix not in blob


def test_gpu_check_stops_when_the_wheel_install_fails(tmp_path):
    tree = tmp_path / "tree"
    (tree / "tests").mkdir(parents=True)
    shutil.copytree(REPO / "tests/gpu", tree / "tests/gpu")
    (tree / ".whl").mkdir()
    (tree / ".whl" / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(tree / "tests/gpu/run_gpu_checks.sh")], cwd=tree, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OUT": str(out), "PYTHON": sys.executable})
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "installing the wheelhouse failed" in proc.stderr
    assert not (out / "junit.xml").exists() and not (out / "preflight.txt").exists()  # stopped right there
    shutil.rmtree(tree / ".whl")
    proc = subprocess.run(["bash", str(tree / "tests/gpu/run_gpu_checks.sh")], cwd=tree, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "OUT": str(out), "PYTHON": sys.executable})
    assert proc.returncode == 3 and "make-wheelhouse" in proc.stderr

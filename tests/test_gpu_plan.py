"""The GPU lease plan on CPU: phase budgets, what comes back (one archive + one summary), the dry run,
the preflight (inside the dry run) and the wheel-install guard.

The GPU machine returns at most 8 files from its output folder (16 MiB each, 2 folders deep) and a
command may run 10 minutes; these tests check the machinery that keeps a run inside those limits
with real processes (``sleep``), real archives and the real scripts.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.gpu import gpu_phases  # noqa: E402
from benchmarks.gpu.gpu_phases import Plan, Step  # noqa: E402
from benchmarks.training import report as bench_report  # noqa: E402

LEASE_COMMAND_S = 600  # one command on the GPU machine


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_phase_plans_fit_the_lease(tmp_path):
    scratch = str(tmp_path / "disk")
    one = gpu_phases.build_plan(1, tmp_path, dry=False, scratch=scratch)
    # the kernels' verdict before the 29.5 GB build; the headline right after the build, alone on the
    # GPU; the checks after it, if time is left
    assert [s.name for s in one.steps] == ["preflight", "kernels", "build-model", "headline", "parity", "gpu-tests"]
    assert [s.name for s in one.promised] == ["preflight", "kernels", "build-model", "headline"]
    # one command may run 600 s: the phase stays under 540 even if every promised step takes its high estimate
    for plan in (one, gpu_phases.build_plan(2, tmp_path, dry=False)):
        assert plan.worst_s <= plan.budget_s < gpu_phases.MAX_PHASE_BUDGET_S <= LEASE_COMMAND_S - 60
        # no step carries a fixed limit: the harness gets what is left when the step starts
        for step in plan.steps:  # (the doctor's --timeout-s limits each of its child processes)
            for flag in ("--timeout-s", "--budget-s"):
                if flag in step.argv:
                    assert step.argv[step.argv.index(flag) + 1] == "{left}", (step.name, step.argv)
    steps = {s.name: s for s in one.steps}
    head = steps["headline"]
    # the full 40-layer geometry at 2 x 5,120 (the harness's gpu preset), not the tiny model, built on the scratch disk
    assert head.argv[head.argv.index("--phases") + 1] == "headline"
    assert head.argv[head.argv.index("--model") + 1] == "arch" and head.needs == ("build-model",)
    arch = f"{scratch}/{gpu_phases.ARCH_NAME}"
    assert head.argv[head.argv.index("--arch-dir") + 1] == arch == steps["build-model"].argv[3]
    # the timed count fills the worker's share, chosen from the second (post-compile) warm-up step
    assert head.argv[head.argv.index("--warmup") + 1] == "2" and head.argv[head.argv.index("--timed") + 1] == "auto"
    # the fused kernels are checked before the build, by the user's doctor; the headline does not wait for them
    assert "doctor --only fused_kernels --json --timeout-s '{left}'" in steps["kernels"].argv[-1]
    assert steps["kernels"].verdict and "kernels" not in head.needs
    # parity's 2-layer model links the full build's shards (4.4 GB not written again)
    assert f"--link-from-if-built {arch}" in steps["parity"].argv[-1]
    # the preflight is the user's doctor in its quick form
    pre = one.steps[0]
    assert pre.argv[-5:] == ["kitrec_fast", "doctor", "--quick", "--timeout-s", "{left}"]


def test_scratch_is_the_largest_writable_disk(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    (tmp_path / "file").write_text("")
    (tmp_path / "link-to-c").symlink_to(c)
    free = {str(a): 10e9, str(b): 35e9, str(c): 35e9, str(tmp_path / "link-to-c"): 99e9}
    cands = [str(tmp_path / "missing"), str(tmp_path / "file"), str(a), str(b), str(c), str(tmp_path / "link-to-c")]
    path, seen = gpu_phases.pick_scratch(cands, free.__getitem__)
    assert path == str(b)  # the most free space; on a tie the first listed; a second name of a folder is not counted
    assert [x["path"] for x in seen] == cands[:5]
    assert [x.get("why") for x in seen[:2]] == ["not a folder", "not a folder"]
    assert [x["free_bytes"] for x in seen[2:]] == [10e9, 35e9, 35e9]
    # the real disk figures: a writable candidate is chosen and the default candidates include the temp folder
    assert gpu_phases.pick_scratch([str(tmp_path / "missing"), str(a)])[0] == str(a)
    assert tempfile.gettempdir() in gpu_phases.scratch_candidates()
    with pytest.raises(SystemExit, match="no writable scratch folder"):
        gpu_phases.pick_scratch([str(tmp_path / "missing")])


def test_the_summary_leads_with_the_kernels_verdict(tmp_path):
    """The doctor's fused_kernels check, from its --json, is the summary's first line; a FAIL fails the
    step (and the phase) but the headline still runs; a doctor without the check is UNKNOWN, and on
    a CPU dry run that step is skipped instead of failing the run."""
    def doctor(status: str, rc: int) -> str:  # what `doctor --only fused_kernels --json` prints (kitrec_fast/doctor.py)
        report = {"quick": False, "wall_s": 1.0, "checks": [
            {"name": "fused_kernels", "status": status, "detail": "apply_lora_mlp_swiglu max error 3.1e-01",
             "data": {}}]}
        return f"echo '{json.dumps(report)}' > {{json}}; cat {{json}}; exit {rc}"

    for dry, script, verdict, status in (
            (False, doctor("FAIL", 1), "(fused kernels, `doctor --only fused_kernels`): FAIL: apply_lora_mlp_swiglu",
             "failed"),
            (False, doctor("ok", 0), "(fused kernels, `doctor --only fused_kernels`): ok: apply_lora", "ok"),
            (True, "echo 'usage: kitrec-fast doctor: error: unrecognized arguments' >&2; exit 2",
             "UNKNOWN: `doctor --only fused_kernels --json` gave no fused_kernels check (exit 2", "skipped")):
        work, out = tmp_path / f"w-{status}", tmp_path / f"o-{status}"
        work.mkdir()
        plan = Plan(1, budget_s=30.0, reserve_s=0.5, steps=[
            Step("kernels", (0, 1), ["sh", "-c", script.replace("{json}", str(work / gpu_phases.KERNELS_JSON))],
                 "the doctor's fused kernels", verdict=True),
            Step("headline", (0, 1), ["true"], "runs whatever the kernels said")])
        rc = gpu_phases.run_plan(plan, work, out, {**_meta(), "dry": dry}, dict(os.environ))
        assert [s.status for s in plan.steps] == [status, "ok"]
        assert rc == (1 if status == "failed" else 0)
        lines = (out / gpu_phases.SUMMARY).read_text().splitlines()
        assert lines[1] == "" and verdict in lines[2], lines[:4]
        assert b"fused_kernels" in _members(out / gpu_phases.ARCHIVE)["test-phase1/logs/kernels.log"] or dry


def _meta():
    return {"device": "test", "slug": "test", "commit": None, "dry": False, "started": "now"}


def test_runner_keeps_the_budget_and_repacks_after_every_step(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    plan = Plan(1, budget_s=6.0, reserve_s=0.5, steps=[
        Step("quick", (0, 1), ["sh", "-c", "echo quick-done; sleep 0.2"], "finishes"),
        # the archive already holds the finished step while the next one runs
        Step("sees-quick", (0, 1), ["sh", "-c", f"tar tzf {out}/{gpu_phases.ARCHIVE} | grep -q logs/quick.log"],
             "re-packed"),
        Step("runaway", (0, 1), ["sh", "-c", "echo runaway-started; sleep 60"], "stopped at the budget"),
        Step("late", (5, 5), ["sh", "-c", "echo late-ran"], "no time left: skipped"),
    ])
    rc = gpu_phases.run_plan(plan, work, out, _meta(), dict(os.environ))
    assert rc == 1
    assert [s.status for s in plan.steps] == ["ok", "ok", "timeout", "skipped"]
    assert plan.steps[2].wall_s < 8  # stopped when the 6 s budget ran out, not after its 60 s
    # the output folder holds exactly the two files, whatever happened
    assert sorted(p.name for p in out.iterdir()) == [gpu_phases.ARCHIVE, gpu_phases.SUMMARY]
    files = _members(out / gpu_phases.ARCHIVE)
    assert b"quick-done" in files["test-phase1/logs/quick.log"]
    assert b"runaway-started" in files["test-phase1/logs/runaway.log"]
    assert "test-phase1/logs/late.log" not in files
    summary = (out / gpu_phases.SUMMARY).read_text()
    assert "| runaway |" in summary and "timeout" in summary and "budget:" in summary


def test_each_step_gets_what_is_left_when_it_starts(tmp_path):
    work, out, seen = tmp_path / "work", tmp_path / "out", tmp_path / "limit.txt"
    plan = Plan(1, budget_s=30.0, reserve_s=1.0, steps=[
        Step("slow", (0, 1), ["sleep", "4"], "takes 4 s"),
        Step("reads", (0, 1), ["sh", "-c", f"echo {{left}} > {seen}"], "records the limit it was handed"),
        Step("broken", (0, 1), ["false"], "fails"),
        Step("uses-broken", (0, 1), ["true"], "needs the failed step", needs=("broken",)),
    ])
    gpu_phases.run_plan(plan, work, out, _meta(), dict(os.environ))
    handed = int(seen.read_text())
    # 30 s - the 4 s already spent - the reserve; filled in when the plan was made it would be 28-29
    assert 23 <= handed <= 25, handed
    assert plan.steps[1].budget_s == handed and plan.steps[0].budget_s in (28, 29)
    assert [s.status for s in plan.steps] == ["ok", "ok", "failed", "skipped"]
    assert plan.steps[3].note == "broken did not finish"
    summary = (out / gpu_phases.SUMMARY).read_text()
    assert f"| reads | records the limit it was handed | 0 (0-1) | {handed} | ok |" in summary


def test_no_worker_outlives_a_stopped_step(tmp_path):
    """A step whose harness started a worker is stopped mid-step: the worker (which even ignores
    SIGTERM, as a process stuck in a CUDA call would) must be gone when the step ends."""

    work, out, pid_file = tmp_path / "work", tmp_path / "out", tmp_path / "worker.pid"
    worker = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)")
    step = ("import sys; sys.path.insert(0, {repo!r}); from benchmarks.training import harness; "
            "harness.run_worker([sys.executable, '-c', {worker!r}], __import__('pathlib').Path({log!r}), None, {{}})"
            ).format(repo=str(REPO), worker=worker, log=str(tmp_path / "worker.log"))
    plan = Plan(1, budget_s=4.0, reserve_s=0.5, steps=[
        Step("headline", (0, 1), [sys.executable, "-c", step], "a harness with one worker, stopped mid-step")])
    gpu_phases.run_plan(plan, work, out, _meta(), dict(os.environ))
    assert plan.steps[0].status == "timeout"
    pid = int(pid_file.read_text())
    alive = Path(f"/proc/{pid}/stat").is_file() and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    assert not alive, f"worker {pid} outlived its step"


def test_only_runs_a_subset_with_what_it_needs(tmp_path):
    plan = gpu_phases.build_plan(1, tmp_path, dry=True)
    plan.select(["headline"])
    assert [s.name for s in plan.steps] == ["build-model", "headline"] and plan.added == {"build-model": "headline"}
    plan = gpu_phases.build_plan(1, tmp_path, dry=True)
    plan.select(["parity", "preflight"])
    assert [s.name for s in plan.steps] == ["preflight", "parity"] and plan.added == {}  # plan order kept
    with pytest.raises(SystemExit, match="unknown step"):
        gpu_phases.build_plan(1, tmp_path, dry=True).select(["headlines"])
    # run_all.sh hands the names on (PYTHON stands in for the interpreter: it prints what it was given)
    echo = tmp_path / "echo.sh"
    echo.write_text("#!/bin/sh\necho \"$@\"\n")
    echo.chmod(0o755)
    proc = subprocess.run(["bash", str(REPO / "benchmarks/gpu/run_all.sh"), "--cpu-dry-run", "--only", "headline",
                           "parity", str(tmp_path / "o")], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHON": str(echo)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["benchmarks/gpu/gpu_phases.py", "--phase", "1", "--out", str(tmp_path / "o"),
                                   "--cpu-dry-run", "--only", "headline", "parity"]


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
    # pytest's JUnit report names the test files in attributes (the GPU run's tests/gpu step)
    (work / "tests.xml").write_text(f'<testsuites><testsuite><testcase file="{here}/tests/gpu/t.py" '
                                    f'name="a"><failure message="at {here}/x.py">{sys.executable}</failure>'
                                    '</testcase></testsuite></testsuites>')
    sys.path.insert(0, here)  # the GPU run puts the checkout on PYTHONPATH: it still reads <repo>
    try:
        first = gpu_phases.pack(work, out, "gpu-phase1")
    finally:
        sys.path.remove(here)
    files = _members(first)
    assert set(files) == {"gpu-phase1/row.json", "gpu-phase1/sub/big.log", "gpu-phase1/tests.xml"}
    row = files["gpu-phase1/row.json"].decode()
    for path in (here, tempfile.gettempdir() + "/", sys.prefix, os.path.expanduser("~") + "/"):
        assert path not in row, path
    assert json.loads(row)["model"] == "<repo>/x"
    import xml.etree.ElementTree as ET

    case = ET.fromstring(files["gpu-phase1/tests.xml"]).find("./testsuite/testcase")
    assert case.get("file") == "<repo>/tests/gpu/t.py", case.attrib
    assert case.find("failure").get("message") == "at <repo>/x.py"
    assert case.find("failure").text.startswith("<python>/"), case.find("failure").text
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
    # the GPU's 530 s budget would cut steps on a busy CI machine: the dry run may take longer
    env = {**os.environ, "PYTHON": sys.executable, "BENCH_BUDGET_S": "1500"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks/gpu/run_all.sh"), "--cpu-dry-run", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=1700, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == [gpu_phases.ARCHIVE, gpu_phases.SUMMARY]
    summary = (out / gpu_phases.SUMMARY).read_text()
    order = [summary.index(f"| {name} |") for name in ("preflight", "kernels", "build-model", "headline", "parity",
                                                         "gpu-tests")]
    assert order == sorted(order)
    # it leads with the fused kernels' verdict (on CPU: the interpreter's, or UNKNOWN and the step skipped),
    # names the scratch disk with its df -h, and says which figures mean nothing here
    lines = summary.splitlines()
    assert lines[2].startswith("Unsloth's GPU stack (fused kernels")
    kernels = next(line for line in lines if line.startswith("| kernels |"))
    assert "| ok |" in kernels and "ok" in lines[2], kernels
    assert "scratch folder for the model:" in summary and "Avail" in summary
    assert "Not meaningful on this CPU: every wall time" in summary
    # honest about the CPU: no GPU test ran, so the step is "skipped", and no figure is presented as a result
    gpu_tests = next(line for line in summary.splitlines() if line.startswith("| gpu-tests |"))
    assert "| skipped |" in gpu_tests and "tests skipped" in gpu_tests, gpu_tests
    assert "NOT MEANINGFUL" in summary and "**" not in summary
    assert "parity (first-step LoRA gradients" in summary and "PASS" in summary
    files = _members(out / gpu_phases.ARCHIVE)
    root = "cpu-dry-run-phase1"
    rows = [json.loads(x) for x in files[f"{root}/headline/results.jsonl"].decode().splitlines()]
    assert [r["backend"] for r in rows] == ["unsloth", "peft"] and all(r["status"] == "ok" for r in rows)
    for r in rows:  # what really ran is recorded on both backends, with the torch that ran it
        steps, mem = r["steps"], r["memory"]
        # the timed count was chosen from the warm-up step to fill the worker's share (3-10), median and spread kept
        assert steps["timed_choice"]["auto"] and steps["timed"] == steps["timed_choice"]["chosen"] == steps["n"]
        assert 3 <= steps["n"] <= 10 and len(steps["timed_s"]) == steps["n"] and steps["spread_rel"] >= 0
        assert steps["first_step_s"] > 0 and r["torch"]["version"]
        # the first step's peak and the steady peak after it, apart
        assert mem["first_step"]["peak_rss_gib"] > 0 and mem["steady"]["peak_rss_gib"] > 0
        assert r["settings"]["activation_dtype"] and r["settings"]["attn_implementation"]
        assert r["settings"]["autocast"] is False and "compile" in r["settings"]
        # the harness's figures (meaningless on CPU, but counted as on the GPU): fixed-length rows, no padding
        tp, data, s = r["throughput"], r["data"], r["settings"]
        assert tp["tokens_per_s_all"] == pytest.approx(tp["tokens_per_s_nonpad"])
        assert tp["tokens_per_s_all"] > tp["tokens_per_s_trained"] > 0 and tp["samples_per_s"] > 0
        assert data["tokens_per_step"]["all"] == data["rows_per_step"] * data["seq_len"]
        trained_per_row = round(data["trained_fraction"] * data["seq_len"])
        assert data["tokens_per_step"]["trained"] == data["rows_per_step"] * trained_per_row
        assert mem["after_load"]["peak_rss_gib"] > 0 and 0 < r["mfu"]["mfu"] and r["mfu"]["reference_tflops"] > 0
        assert s["loss"] == "chunked" and s["label_smoothing"] > 0 and s["padding_free"] is False and s["optimizer"]
        assert all(math.isfinite(x) for x in r["losses"]) and r["env"]["device_name"].startswith("CPU")
    u, p = rows  # each backend in its own process, and only the fast path's imported unsloth; the same batches
    assert u["settings"]["unsloth_version"] and p["settings"]["unsloth_version"] is None
    assert u["data"]["batch_sha1"] == p["data"]["batch_sha1"] and u["data"]["batch_sha1"]
    assert u["settings"]["lora_r"] == p["settings"]["lora_r"] and u["settings"]["seed"] == p["settings"]["seed"]
    # the headline folder as it comes back (the GPU leaves the report to report.py here): its report
    # parses back to the rows' numbers, with its plots and run record
    headline, prefix = tmp_path / "headline", f"{root}/headline/"
    for name, data in files.items():
        if name.startswith(prefix):
            path = headline / name.removeprefix(prefix)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    bench_report.write_report(headline)
    md = (headline / "results.md").read_text()
    table = bench_report.parse_table(md, "## Throughput")
    assert [t["config"] for t in table] == [r["name"] for r in rows]
    for t, r in zip(table, rows):
        for col, key in (("tok_s_all", "tokens_per_s_all"), ("tok_s_nonpad", "tokens_per_s_nonpad"),
                         ("tok_s_trained", "tokens_per_s_trained"), ("samples_s", "samples_per_s")):
            assert bench_report.parse_number(t[col]) == pytest.approx(r["throughput"][key], rel=5e-3)
        assert bench_report.parse_number(t["step_median_s"]) == pytest.approx(r["steps"]["median_s"], rel=5e-3)
        assert bench_report.parse_number(t["mfu_pct"]) == pytest.approx(100 * r["mfu"]["mfu"], rel=5e-3)
    assert bench_report.parse_table(md, "## Fast path vs baseline")[0]["identical_batches"] == "yes"
    for png in ("tokens_per_s.png", "peak_memory.png"):
        assert (headline / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((headline / "run.json").read_text())["configs"] == [r["name"] for r in rows]
    # the fast path against the baseline from one saved adapter: the first-step gradients agree
    parity = json.loads(files[f"{root}/parity/parity.json"])
    assert parity["ok"] and parity["identical_batches"] and parity["grads"]["tensors"] == 28
    # its 2-layer model was made of links to the build step's shards, and that build logged df -h first
    assert "shards linked from" in files[f"{root}/logs/parity.log"].decode()
    assert "df -h before" in files[f"{root}/logs/build-model.log"].decode()
    assert parity["grads"]["worst_cosine"] > 0.999 and parity["grads"]["worst_rel_norm_gap"] < 0.01
    assert all(parity["settings"][b]["init_adapter"] for b in ("unsloth", "peft"))
    plan = json.loads(files[f"{root}/plan.json"])
    assert {s["name"]: s["status"] for s in plan["steps"]}["headline"] == "ok"
    # the kernels step is the user's `doctor --only fused_kernels --json`: that check alone, and on this CPU
    # Unsloth's fused functions ran through Triton's interpreter in fp32, each within 1e-5 of PEFT
    report = json.loads(files[f"{root}/{gpu_phases.KERNELS_JSON}"])
    assert report["only"] == "fused_kernels" and [c["name"] for c in report["checks"]] == ["fused_kernels"]
    fused = report["checks"][0]
    assert fused["status"] == "ok" and fused["data"]["interpreter"] and fused["data"]["dtype"] == "float32", fused
    assert set(fused["data"]["worst"]) == {"qkv", "o", "mlp", "rms_norm"} and max(fused["data"]["worst"].values()) <= 1e-5
    # the preflight is the user's doctor --quick: unsloth imports (in its own process)
    pre = files[f"{root}/logs/preflight.log"].decode()
    assert "doctor --quick" in pre and "unsloth importable" in pre and "FAIL" not in pre
    blob = b"".join(files.values()).decode(errors="replace")
    assert str(REPO) not in blob and sys.prefix not in blob


@pytest.mark.slow
def test_a_worker_stopped_mid_run_leaves_a_partial_row(tmp_path):
    """The worker writes its row after every step; stopped at the harness's limit, the row it left is
    collected as ``partial`` with the figures of the steps that finished."""
    from benchmarks.gpu import procs
    from benchmarks.training import harness

    spec = {"name": "cut-peft", "backend": "peft", "model": "testkit:tiny-qwen3", "kind": "throughput",
            "recipe": "dualft_music_seta", "batch_size": 2, "max_seq_length": 256, "warmup_steps": 1,
            "timed_steps": 400, "seed": 42, "data": {"mode": "fixed", "seq_len": 128, "trained_fraction": 0.12},
            "overrides": {"data.tokenizer": "offline:qwen3"}}
    spec_path, row_path, log = tmp_path / "spec.json", tmp_path / "row.json", tmp_path / "worker.log"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks/training/worker.py"), "--spec", str(spec_path),
                                 "--out", str(row_path)], stdout=f, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            if row_path.is_file() and (json.loads(row_path.read_text()).get("steps") or {}).get("done", 0) >= 3:
                break
            time.sleep(0.2)
    finally:
        procs.kill_tree(proc)  # what the harness does at a worker's limit
    row = harness.collect_row(row_path, None, spec, log)
    assert row["status"] == "partial", (row.get("status"), row.get("error"), log.read_text()[-2000:])
    steps = row["steps"]
    assert 3 <= steps["done"] < 401 and f"after {steps['done']} of 401 steps" in row["error"]
    assert len(steps["timed_s"]) == steps["done"] - 1 == steps["n"] and steps["first_step_s"] > 0
    assert row["throughput"]["tokens_per_s_trained"] > 0 and row["memory"]["training"]["peak_rss_gib"] > 0
    assert row["torch"]["version"] and row["settings"]["backend"] == "peft" and not row_path.exists()


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


@pytest.mark.parametrize("which", ["MODEL_ARGS", "PROBE_ARGS"])
def test_gpu_tests_settings_prepare_their_data(which):
    # tests/gpu runs only on a GPU lease; its data settings are checked here, where a row they cannot
    # hold (the smoke rows at 2,048 tokens with 20 candidates) fails in seconds instead of on the lease
    import importlib.util

    from kitrec_fast.data.pipeline import prepare
    from kitrec_fast.render.tokenizer import load_tokenizer
    from kitrec_fast.train.cli import build_parser, parse_run_args, resolve_config

    spec = importlib.util.spec_from_file_location("gpu_train_settings", REPO / "tests/gpu/test_gpu_train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = getattr(mod, which)
    cfg = resolve_config("dualft_music", parse_run_args(build_parser("t", False, ""), ["--smoke", *args]))
    data = prepare(cfg.data, load_tokenizer(cfg.data.tokenizer))
    assert len(data.train) + len(data.validation) == cfg.data.limit

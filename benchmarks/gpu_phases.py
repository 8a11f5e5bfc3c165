"""The GPU lease plan: phases of steps with time budgets, one archive + one summary as the only output.

    python benchmarks/gpu_phases.py --phase 1 --out OUT [--cpu-dry-run]    (run by gpu/run_all.sh)

A GPU machine returns at most 8 files from its output folder, and one command may run 10 minutes
of a 15-minute lease. So the work happens in a scratch folder and ``OUT`` only ever holds
``ARCHIVE`` (everything, re-packed after every step, so a run killed at its limit still returns
what finished) and ``SUMMARY`` (the plan, its estimates, each step's status and the headline figures).

Phase 1 (one command, under 6 minutes, so a lease can rerun it once): preflight, the GPU tests,
the parity check and the headline pair. Phase 2 (a later lease): token scaling and memory ceilings.
``--cpu-dry-run`` runs the very same plan on CPU with the tiny model (one step per configuration)
and leaves the same two files; the estimates in its summary are the GPU ones.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]
ARCHIVE = "kitrec-bench.tar.gz"
SUMMARY = "summary.md"
# What the GPU machine returns: files under OUT, each at most 16 MiB (kept below with a margin).
MAX_ARCHIVE_BYTES = 15 * 2**20
MAX_LOG_BYTES = 2 * 2**20  # a log larger than this is cut to its last 2 MiB in the archive
ARCH_DIR = "/tmp/kitrec-qwen3-14b-arch"
PARITY_LAYERS = 2
INPUTS = {"build-model"}  # steps whose failure leaves a later step nothing to run on


@dataclass
class Step:
    name: str
    est_s: float  # expected GPU wall time (not measured yet; see benchmarks/README.md)
    argv: list[str]
    what: str
    background: bool = False  # started now, runs alongside; a later step lists it in ``wait_for``
    wait_for: tuple[str, ...] = ()
    env: dict = field(default_factory=dict)  # added to the environment of this step's process
    status: str = "pending"
    wall_s: float | None = None
    rc: int | None = None
    note: str = ""


@dataclass
class Plan:
    phase: int
    budget_s: float
    steps: list[Step] = field(default_factory=list)

    @property
    def estimate_s(self) -> float:
        """The critical path: a background step overlaps the foreground until a step waits for it."""
        t, done_at = 0.0, {}
        for s in self.steps:
            if s.background:
                done_at[s.name] = t + s.est_s
                continue
            t = max([t] + [done_at.get(name, 0.0) for name in s.wait_for]) + s.est_s
        return t


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def build_plan(phase: int, work: Path, dry: bool, budget_s: float | None = None) -> Plan:
    """The steps of a phase. ``dry``: the tiny model on CPU, one step per configuration."""
    py = sys.executable
    arch, parity_model = ARCH_DIR, f"{ARCH_DIR}-l{PARITY_LAYERS}"
    model = "testkit:tiny-qwen3" if dry else arch
    harness = [py, str(HERE / "harness.py"), "--no-report"]
    if dry:
        common = ["--preset", "custom", "--model", "tiny", "--seq-lens", "256", "--warmup", "0", "--timed", "1",
                  "--no-pipeline", "--jobs", "2"]
    else:
        common = ["--preset", "gpu", "--model", "arch", "--arch-dir", arch, "--arch-device", "cuda"]
    if phase == 1:
        # The checks (GPU tests, parity) do not time anything, so they run alongside the model build;
        # the headline pair, which is timed, waits for all of them and has the GPU to itself.
        plan = Plan(1, budget_s or 345.0)
        build = [py, str(HERE / "build_arch_model.py"), "--out", arch, "--device", "cuda"]
        parity = [py, str(HERE / "parity.py"), "run", "--out", str(work / "parity"),
                  "--model", model if dry else parity_model]
        parity += ["--steps", "1", "--seq-len", "256"] if dry else ["--steps", "3", "--seq-len", "1024"]
        if not dry:  # its own 2-layer model first (own shards: the full build is not there yet)
            parity = ["sh", "-c", shlex.join([py, str(HERE / "build_arch_model.py"), "--out", parity_model,
                                              "--layers", str(PARITY_LAYERS), "--device", "cuda"])
                      + " && " + shlex.join(parity)]
        # concurrent Unsloth processes each get their own generated-code folder
        own_cache = (lambda name: {} if dry else {"UNSLOTH_COMPILE_LOCATION": f"/tmp/unsloth_compiled_cache-{name}"})
        plan.steps = [
            Step("preflight", 15, [py, str(HERE / "preflight.py")], "GPU, libraries (unsloth first), compiler"),
            Step("build-model", 75, ["true"] if dry else build,
                 "architecture-only Qwen3-14B (random bf16 weights, 29.5 GB)", background=True),
            Step("gpu-tests", 115, [py, "-m", "pytest", "-q", "-s", str(REPO / "tests/gpu"),
                                    "--junitxml", str(work / "gpu-tests.xml")],
                 "tests/gpu: both backends train on the GPU; fused kernels, autocast, runtime facts",
                 background=True, env=own_cache("tests")),
            Step("parity", 105, parity, f"loss parity from one saved adapter, {PARITY_LAYERS}-layer Qwen3-14B geometry",
                 background=True, env=own_cache("parity")),
            Step("headline", 150, harness + common + ["--out", str(work / "headline"), "--budget-s", "{left}",
                                                      "--timeout-s", "{left}"]
                 + ([] if dry else ["--phases", "headline", "--warmup", "1", "--timed", "2"]),
                 "fast path vs baseline, 2 x 5,120 tokens, 40 layers, smoothing on",
                 wait_for=("build-model", "gpu-tests", "parity")),
        ]
        return plan
    if phase == 2:
        plan = Plan(2, budget_s or 540.0)
        plan.steps = [
            Step("build-model", 75, ["true"] if dry else [py, str(HERE / "build_arch_model.py"), "--out", arch,
                                                           "--device", "cuda"], "architecture-only Qwen3-14B"),
            Step("scaling", 200, harness + common + ["--out", str(work / "scaling"), "--budget-s", "{left}",
                                                     "--timeout-s", "{left}"]
                 + ([] if dry else ["--phases", "scaling", "--warmup", "1", "--timed", "2"]),
                 "token scaling 1,024-8,192 on 4 of 40 layers (per-layer figures)"),
            Step("ceilings", 250, harness + common + ["--out", str(work / "ceilings"), "--budget-s", "{left}",
                                                      "--timeout-s", "{left}"]
                 + (["--seq-lens", "512"] if dry else ["--phases", "ceilings"]),
                 "longest length at batch 2 under 16/24/48 GB caps, 40 layers"),
        ]
        return plan
    raise SystemExit(f"--phase: 1 or 2, got {phase}")


# --------------------------------------------------------------------------------------------------
# output: one archive, one summary


def _add_capped(tar: tarfile.TarFile, path: Path, arcname: str) -> None:
    """Add one file: text scrubbed of this machine's paths and cut to its last 2 MiB; no weights."""
    if path.suffix in (".safetensors", ".bin", ".pt") or path.is_symlink():
        return  # weights (adapters, models) never travel back; their recipes are in the logs
    import io

    from scrub import TEXT_SUFFIXES, scrub_text

    data = path.read_bytes()
    if path.suffix in TEXT_SUFFIXES:
        data = scrub_text(data.decode("utf-8", errors="replace")).encode()
    if len(data) > MAX_LOG_BYTES:
        data = b"[... cut to the last 2 MiB ...]\n" + data[-MAX_LOG_BYTES:]
    info = tarfile.TarInfo(arcname)
    info.size, info.mtime, info.mode = len(data), int(path.stat().st_mtime), 0o644
    tar.addfile(info, io.BytesIO(data))


def pack(work: Path, out: Path, root_name: str) -> Path:
    """Re-pack ``work`` into ``out/ARCHIVE`` atomically (the previous archive stays until replaced)."""
    out.mkdir(parents=True, exist_ok=True)
    part = out / (ARCHIVE + ".part")
    files = sorted(p for p in work.rglob("*") if p.is_file() and not p.is_symlink())
    with tarfile.open(part, "w:gz") as tar:
        for p in files:
            _add_capped(tar, p, f"{root_name}/{p.relative_to(work)}")
    if part.stat().st_size > MAX_ARCHIVE_BYTES:
        # keep the results, drop the logs (largest first) until the archive fits what comes back
        keep = [p for p in files if p.suffix in (".json", ".jsonl", ".md", ".xml", ".txt")]
        with tarfile.open(part, "w:gz") as tar:
            for p in keep:
                _add_capped(tar, p, f"{root_name}/{p.relative_to(work)}")
    os.replace(part, out / ARCHIVE)
    return out / ARCHIVE


def _headline_lines(work: Path) -> list[str]:
    path = work / "headline" / "results.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = ["", "| config | status | trained tok/s | all tok/s | step s | peak GiB | activation | compile | fused |",
             "|---|---|---|---|---|---|---|---|---|"]
    by = {}
    for r in rows:
        tp, st, mem = r.get("throughput") or {}, r.get("steps") or {}, (r.get("memory") or {}).get("training") or {}
        s = r.get("settings") or {}
        peak = mem.get("peak_allocated_gib", mem.get("peak_rss_gib"))
        by[r.get("backend")] = tp.get("tokens_per_s_trained")
        lines.append(f"| {r['name']} | {r['status']} | {_f(tp.get('tokens_per_s_trained'))} | "
                     f"{_f(tp.get('tokens_per_s_all'))} | {_f(st.get('median_s'))} | {_f(peak)} | "
                     f"{s.get('activation_dtype')} | {s.get('compile')} | {s.get('fused_lora_kernels')} |")
    if by.get("unsloth") and by.get("peft"):
        lines.append(f"\nfast path / baseline, trained tokens/s: **{by['unsloth'] / by['peft']:.2f}x**")
    return lines


def _f(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def write_summary(plan: Plan, work: Path, out: Path, meta: dict) -> None:
    lines = [f"# kitrec_fast GPU phase {plan.phase}{' (CPU dry run, tiny model)' if meta.get('dry') else ''}",
             "", f"device: {meta.get('device')}  commit: {meta.get('commit')}  started: {meta.get('started')}",
             f"budget {plan.budget_s:.0f} s, estimated {plan.estimate_s:.0f} s (GPU), elapsed "
             f"{meta.get('elapsed_s', 0):.0f} s; everything is in {ARCHIVE}", "",
             "| step | what | est s (GPU) | status | wall s | note |", "|---|---|---|---|---|---|"]
    for s in plan.steps:
        lines.append(f"| {s.name} | {s.what} | {s.est_s:.0f} | {s.status} | {_f(s.wall_s)} | {s.note} |")
    parity = work / "parity" / "parity.json"
    if parity.is_file():
        p = json.loads(parity.read_text())
        lines += ["", f"parity: ok={p.get('ok')} max relative loss gap {_f(p.get('max_rel_gap'))} "
                      f"(rtol {p.get('rtol')}) {p.get('error') or ''}".rstrip()]
    lines += _headline_lines(work)
    from kitrec_fast.fsio import atomic_write_text

    atomic_write_text(out / SUMMARY, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------------
# running


def _start(step: Step, argv: list[str], log: Path, env: dict) -> subprocess.Popen:
    f = open(log, "w")
    f.write(f"$ {shlex.join(argv)}\n")
    f.flush()
    return subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)


def _wait(proc: subprocess.Popen, timeout: float) -> int | None:
    try:
        return proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def run_plan(plan: Plan, work: Path, out: Path, meta: dict, env: dict) -> int:
    t0 = time.monotonic()
    root = f"{meta['slug']}-phase{plan.phase}"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    background: dict[str, tuple[Step, subprocess.Popen, float]] = {}

    def left() -> float:
        return plan.budget_s - (time.monotonic() - t0)

    def finish() -> None:
        meta["elapsed_s"] = time.monotonic() - t0
        (work / "plan.json").write_text(json.dumps({"meta": meta, "phase": plan.phase, "budget_s": plan.budget_s,
                                                    "estimate_s": plan.estimate_s,
                                                    "steps": [s.__dict__ for s in plan.steps]}, indent=1) + "\n")
        write_summary(plan, work, out, meta)
        pack(work, out, root)

    finish()
    failed = False
    for step in plan.steps:
        argv = [a.replace("{left}", str(int(max(left() - 5, 1)))) for a in step.argv]
        log = work / "logs" / f"{step.name}.log"
        if step.background:
            background[step.name] = (step, _start(step, argv, log, {**env, **step.env}), time.monotonic())
            step.status, step.note = "running", "alongside; wall time = until waited for"
            continue
        waited = [background.pop(name) for name in step.wait_for if name in background]
        pending = list(waited)
        while pending:  # re-pack as each one ends, so a run stopped meanwhile keeps what finished
            for item in list(pending):
                bstep, proc, started = item
                rc = proc.poll()
                if rc is None and left() > 0:
                    continue
                if rc is None:
                    rc = _wait(proc, 0)
                bstep.rc, bstep.wall_s = rc, time.monotonic() - started
                bstep.status = "ok" if rc == 0 else ("timeout" if rc is None else "failed")
                failed |= rc != 0
                pending.remove(item)
                finish()
            if pending:
                time.sleep(0.5)
        # only a missing input stops a step; a failed check is reported and the timed pair still runs
        lost = [b.name for b, _, _ in waited if b.name in INPUTS and b.status != "ok"]
        if lost:
            step.status, step.note = "skipped", f"{lost[0]} did not finish"
            finish()
            continue
        if left() < min(step.est_s, 30):
            step.status, step.note = "skipped", f"budget: {left():.0f} s left, needs ~{step.est_s:.0f} s"
            finish()
            continue
        started = time.monotonic()
        print(f"[phase {plan.phase}] {step.name} (est {step.est_s:.0f} s, {left():.0f} s left)", file=sys.stderr,
              flush=True)
        rc = _wait(_start(step, argv, log, {**env, **step.env}), left())
        step.rc, step.wall_s = rc, time.monotonic() - started
        step.status = "ok" if rc == 0 else ("timeout" if rc is None else "failed")
        failed |= rc != 0
        finish()
    for name, (bstep, proc, started) in background.items():  # never waited for: stop it
        rc = _wait(proc, 1.0) if proc.poll() is None else proc.returncode
        bstep.rc, bstep.wall_s, bstep.status = rc, time.monotonic() - started, "ok" if rc == 0 else "stopped"
    finish()
    return 1 if failed else 0


def _device(dry: bool) -> str:
    if dry:
        return "cpu-dry-run"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown-gpu"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown-gpu"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase", type=int, default=1, choices=(1, 2))
    ap.add_argument("--out", help=f"receives only {ARCHIVE} and {SUMMARY}")
    ap.add_argument("--cpu-dry-run", action="store_true", help="the same plan on CPU with the tiny model")
    ap.add_argument("--budget-s", type=float, default=None, help="phase budget (default: the phase's own)")
    ap.add_argument("--work-dir", default=None, help="scratch folder (default: a new temporary one)")
    ap.add_argument("--plan", action="store_true", help="print the plan with its estimates and exit")
    args = ap.parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="kitrec-phase-"))
    plan = build_plan(args.phase, work, args.cpu_dry_run, args.budget_s)
    if args.plan:
        for s in plan.steps:
            print(f"{s.name:20s} ~{s.est_s:4.0f} s  {'(alongside) ' if s.background else ''}{s.what}")
        print(f"critical path ~{plan.estimate_s:.0f} s of a {plan.budget_s:.0f} s budget")
        return 0
    if not args.out:
        ap.error("--out is required (unless --plan)")
    device = _device(args.cpu_dry_run)
    commit = os.environ.get("KITREC_GIT_COMMIT")
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                    timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            commit = None
    meta = {"device": device, "slug": slug(device), "commit": commit, "dry": args.cpu_dry_run,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if commit:
        env["KITREC_GIT_COMMIT"] = commit
    return run_plan(plan, work, Path(args.out), meta, env)


if __name__ == "__main__":
    sys.exit(main())

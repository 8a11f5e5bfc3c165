"""The GPU lease plan: phases of steps with time budgets, one archive + one summary as the only output.

    python benchmarks/gpu/gpu_phases.py --phase 1 --out OUT [--cpu-dry-run] [--only STEP ...]   (run by run_all.sh)

A GPU machine returns at most 8 files from its output folder, and one command may run 10 minutes
of a 15-minute lease. So the work happens in a scratch folder and ``OUT`` only ever holds
``ARCHIVE`` (everything, re-packed after every step, so a run killed at its limit still returns
what finished) and ``SUMMARY`` (the plan, its estimates against what each step took, each step's
status, the parity verdict and the headline figures).

Phase 1 (one command, under 540 s): a quick preflight (``kitrec-fast doctor --quick``), the fused
kernels' verdict (``kitrec-fast doctor --only fused_kernels``, the summary's first line), the model
build on the largest writable scratch disk (``pick_scratch``, ``df -h`` first), then the headline pair with the GPU to itself, then the parity check and ``tests/gpu`` if time
is left. The steps run one after the other; each step's time limit is what is left of the phase
budget when it starts. Phase 2 (a later lease): token scaling and memory ceilings. ``--only`` runs a
subset plus the steps they need (named in the summary). ``--cpu-dry-run`` runs the very same plan on
CPU with the tiny model (one step per configuration) and leaves the same two files; its estimates
are the GPU ones and its timings mean nothing.

Every step runs in its own process group and everything it starts stays in it (``procs.py``): at
the limit the whole group is stopped and waited for, so no worker outlives its step.
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
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TRAINING = REPO / "benchmarks" / "training"
sys.path.insert(0, str(REPO))
ARCHIVE = "kitrec-bench.tar.gz"
SUMMARY = "summary.md"
# What the GPU machine returns: files under OUT, each at most 16 MiB (kept below with a margin).
MAX_ARCHIVE_BYTES = 15 * 2**20
MAX_LOG_BYTES = 2 * 2**20  # a log larger than this is cut to its last 2 MiB in the archive
ARCH_NAME = "kitrec-qwen3-14b-arch"  # the full build, in the scratch folder (``pick_scratch``)
ARCH_DIR = f"/tmp/{ARCH_NAME}"  # the scratch folder when none is given (the plan test, --plan)
PARITY_LAYERS = 2
# The dry run's stand-in for the 29.5 GB build: the same builder and layout at the tiny model's width
# (3 layers, so parity's 2-layer model is made of links to it, as on the GPU)
DRY_ARCH_NAME = "kitrec-qwen3-arch-dry"
DRY_ARCH_OVERRIDES = ("hidden_size=64", "intermediate_size=128", "num_attention_heads=4", "num_key_value_heads=2",
                      "head_dim=16", "num_hidden_layers=3")
KERNELS_JSON = "kernels.json"  # the kernels step's doctor --json output, in the work folder
# Figures of a CPU dry run that say nothing about a GPU (the tiny model on a CPU): named in its summary.
CPU_MEANINGLESS = ("every wall time and its ratio to the GPU estimate", "tokens/s and step times (median, "
                   "spread) and the fast path / baseline ratio", "the timed-step count (chosen from a CPU step)",
                   "memory (CPU: the process's peak RSS, in the allocated columns; no reserved figure exists)",
                   "compile and fused-kernel columns (Unsloth compiles and fuses only on a GPU)")
# One command may run 600 s; the phase keeps 60 s for the machine's own start of the command, the
# last re-pack and the transfer back.
MAX_PHASE_BUDGET_S = 540
PHASE_BUDGET_S = {1: 530.0, 2: 530.0}
RESERVE_S = 10  # kept back from each step's limit: stopping its group, the summary, the re-pack


@dataclass
class Step:
    name: str
    est_range: tuple[float, float]  # expected GPU wall time, low-high (see ``build_plan``)
    argv: list[str]
    what: str
    needs: tuple[str, ...] = ()  # steps whose output this one uses (added by --only, stop it when not ok)
    min_s: float | None = None  # start only with this much budget left (default: the low estimate)
    env: dict = field(default_factory=dict)  # added to the environment of this step's process
    junit: str | None = None  # a pytest step's report: all tests skipped -> the step is "skipped"
    if_time_left: bool = False  # not part of the phase's promise: runs only if the budget still allows
    verdict: bool = False  # the kernels step: its doctor JSON gives the verdict the summary leads with
    status: str = "pending"
    budget_s: float | None = None  # the limit it was handed when it started
    wall_s: float | None = None
    rc: int | None = None
    note: str = ""

    @property
    def est_s(self) -> float:
        return sum(self.est_range) / 2


@dataclass
class Plan:
    phase: int
    budget_s: float
    steps: list[Step] = field(default_factory=list)
    added: dict[str, str] = field(default_factory=dict)  # step -> why --only added it
    reserve_s: float = RESERVE_S

    @property
    def promised(self) -> list[Step]:
        return [s for s in self.steps if not s.if_time_left]

    @property
    def estimate_s(self) -> float:
        """The promised steps' expected time (the budget is sized so that even ``worst_s`` fits)."""
        return sum(s.est_s for s in self.promised)

    @property
    def worst_s(self) -> float:
        return sum(s.est_range[1] for s in self.promised)

    def select(self, only: list[str]) -> None:
        """Keep the steps named in ``only`` plus, transitively, the steps they need (in plan order)."""
        by_name = {s.name: s for s in self.steps}
        unknown = [n for n in only if n not in by_name]
        if unknown:
            raise SystemExit(f"--only: unknown step(s) {', '.join(unknown)}; phase {self.phase} has "
                             f"{', '.join(by_name)}")
        keep, todo = set(only), list(only)
        while todo:
            for need in by_name[todo.pop()].needs:
                if need not in keep:
                    keep.add(need)
                    todo.append(need)
                    self.added.setdefault(need, ", ".join(s for s in only if need in by_name[s].needs)
                                          or "a step it needs")
        self.steps = [s for s in self.steps if s.name in keep]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def scratch_candidates() -> list[str]:
    """Where the 29.5 GB model may go, in order of preference on a tie: ``KITREC_SCRATCH`` when set,
    the temporary folder, /var/tmp, the folder above the checkout, the home folder. Not /dev/shm:
    it is host memory, which the load itself needs."""
    return [p for p in (os.environ.get("KITREC_SCRATCH"), tempfile.gettempdir(), "/tmp", "/var/tmp",
                        str(REPO.parent), os.path.expanduser("~")) if p]


def pick_scratch(candidates: list[str], free_bytes=None) -> tuple[str, list[dict]]:
    """The writable folder with the most free space (the first listed on a tie), and what was seen
    of every candidate (free bytes, or why it was passed over). ``free_bytes(path)`` defaults to
    ``shutil.disk_usage(path).free``."""
    import shutil

    free_bytes = free_bytes or (lambda p: shutil.disk_usage(p).free)
    seen, best, seen_real = [], None, set()
    for path in candidates:
        real = os.path.realpath(path)
        if real in seen_real:
            continue
        seen_real.add(real)
        if not os.path.isdir(path):
            seen.append({"path": path, "free_bytes": None, "why": "not a folder"})
            continue
        if not os.access(path, os.W_OK | os.X_OK):
            seen.append({"path": path, "free_bytes": None, "why": "not writable"})
            continue
        free = int(free_bytes(path))
        seen.append({"path": path, "free_bytes": free})
        if best is None or free > best[1]:
            best = (path, free)
    if best is None:
        raise SystemExit(f"error: no writable scratch folder among {', '.join(candidates)} (set KITREC_SCRATCH)")
    return best[0], seen


def _fused_verdict(work: Path, step: Step | None) -> tuple[str, str]:
    """(status, line) of the kernels step: the ``fused_kernels`` check of ``doctor --only fused_kernels
    --json``, or UNKNOWN with the reason when that doctor gave none (an older doctor, a crash)."""
    if step is None or step.status in ("pending",) or (step.status == "skipped" and step.rc is None):
        return "not checked", f"Unsloth's GPU stack (fused kernels): not checked ({step.note if step else 'not in this run'})"
    check = None
    path = work / KERNELS_JSON
    text = path.read_text(errors="replace") if path.is_file() else ""
    try:
        report = json.loads(text)
        check = next((c for c in report.get("checks", []) if c.get("name") == "fused_kernels"), None)
    except (ValueError, AttributeError):
        report = None
    if check is None:
        why = f"exit {step.rc}" if step.rc is not None else step.status
        return "UNKNOWN", (f"Unsloth's GPU stack (fused kernels): UNKNOWN: `doctor --only fused_kernels --json` gave no "
                           f"fused_kernels check ({why}; see logs/kernels.log)")
    return check.get("status", "?"), (f"Unsloth's GPU stack (fused kernels, `doctor --only fused_kernels`): "
                                      f"{check.get('status')}: {check.get('detail')}")


def build_plan(phase: int, work: Path, dry: bool, budget_s: float | None = None, scratch: str | None = None) -> Plan:
    """The steps of a phase. ``dry``: the tiny model on CPU, one step per configuration. ``scratch``:
    the folder the model is built in (``pick_scratch``; default the temporary folder).

    GPU estimates (low-high seconds). Measured on the H200 (2026-12-04, benchmarks/results/nvidia-h200):
    preflight 55, kernels 48, build-model 48, headline 212 (10 timed steps each), parity 127, gpu-tests
    185 (two of its four tests stopped early); the ranges below were set from those. The reasoning
    they started from (unsloth 2026.10.9, bitsandbytes 0.50.2, transformers 5.17.0, torch 2.11):
    - preflight (``doctor --quick``): imports only, unsloth's in a child process ~15 s: 10-30.
    - kernels (``doctor --only fused_kernels``): importing unsloth in a child process 10-30 s, the
      fused functions against PEFT on one small layer with their Triton kernels compiled on first
      use, a few seconds: 15-45.
    - build-model: 29.5 GB of random bf16 weights drawn on the GPU and written to the scratch disk: 40-90.
    - headline: calibration ~10 s; per worker import ~20 s, the 14B load with nf4 quantization on
      load 40-70 s (each bf16 tensor is quantized as it moves to the GPU:
      ``bitsandbytes/nn/modules.py:381`` ``Params4bit._quantize``), then on the fast path one
      ``torch.compile`` region per decoder-layer class on the first step
      (``unsloth/models/_block_compile.py:1205`` ``patch_block_compile``; its nf4 tracing needs
      torch >= 2.11, same file line 749) 40-120 s, then 2 warm-up steps of 2 x 5,120 tokens (~0.6
      PFLOP each, benchmarks/training/flops.py) 5-15 s each and 3-10 timed ones, as many as the worker's
      share still holds (``--timed auto``): 200-350 for the pair, whatever the count.
    - parity: its 2-layer model linked to the full build (seconds), two workers at 2 x 1,024 tokens,
      compile again: 110-190.
    - gpu-tests: four Unsloth/peft processes on the tiny model, each importing and compiling: 130-300.
    """
    py = sys.executable
    scratch = scratch or str(Path(ARCH_DIR).parent)
    arch = str(Path(scratch) / (DRY_ARCH_NAME if dry else ARCH_NAME))
    parity_model = f"{arch}-l{PARITY_LAYERS}"
    harness = [py, str(TRAINING / "harness.py"), "--no-report"]
    budget = ["--budget-s", "{left}", "--timeout-s", "{left}"]
    builder = [py, str(HERE / "build_arch_model.py")]
    tiny = [a for o in DRY_ARCH_OVERRIDES for a in ("--override", o)] if dry else []
    if dry:
        common = ["--preset", "custom", "--model", "tiny", "--seq-lens", "256", "--warmup", "1", "--timed", "auto",
                  "--timed-max", "3", "--no-pipeline", "--jobs", "2"]  # the automatic count, kept at 3 steps on CPU
    else:
        common = ["--preset", "gpu", "--model", "arch", "--arch-dir", arch, "--arch-device", "cuda"]
    build = Step("build-model", (40, 70), builder + ["--out", arch, "--device", "cpu" if dry else "cuda"] + tiny,
                 "architecture-only Qwen3-14B (random bf16 weights, 29.5 GB; df -h of the scratch disk first)"
                 + (" (dry run: the same builder at the tiny model's width)" if dry else ""))
    if phase == 1:
        # its own 2-layer model, made of links to the full build's shards when that is there (else written)
        parity = ["sh", "-c", shlex.join(builder + ["--out", parity_model, "--layers", str(PARITY_LAYERS), "--device",
                                                    "cpu" if dry else "cuda", "--link-from-if-built", arch] + tiny)
                  + " && " + shlex.join([py, str(HERE / "parity.py"), "run", "--out", str(work / "parity"),
                                         "--model", parity_model]
                                        + (["--steps", "1", "--seq-len", "256", "--jobs", "2"] if dry
                                           else ["--steps", "3", "--seq-len", "1024"]))]
        kernels_json = shlex.quote(str(work / KERNELS_JSON))
        doctor = shlex.join([py, "-m", "kitrec_fast", "doctor", "--only", "fused_kernels", "--json", "--timeout-s",
                             "{left}"])
        plan = Plan(1, budget_s or PHASE_BUDGET_S[1])
        plan.steps = [
            Step("preflight", (45, 65), [py, "-m", "kitrec_fast", "doctor", "--quick", "--timeout-s", "{left}"],
                 "kitrec-fast doctor --quick: versions, CUDA, bitsandbytes library, triton, unsloth importable"),
            # the JSON goes to its own file (the verdict the summary leads with) and into the step's log
            Step("kernels", (40, 60), ["sh", "-c", f"{doctor} > {kernels_json}; rc=$?; cat {kernels_json}; exit $rc"],
                 "kitrec-fast doctor --only fused_kernels: Unsloth's fused kernels against PEFT on this GPU",
                 verdict=True),
            build,
            Step("headline", (200, 260), harness + common + ["--out", str(work / "headline")] + budget
                 + ([] if dry else ["--phases", "headline", "--warmup", "2", "--timed", "auto"]),
                 "fast path vs baseline, 2 x 5,120 tokens, 40 layers, smoothing on (GPU to itself)",
                 needs=("build-model",), min_s=120),
            Step("parity", (115, 150), parity,
                 f"first-step LoRA gradients from one saved adapter, {PARITY_LAYERS}-layer Qwen3-14B geometry "
                 "(links to the full build's shards)",
                 if_time_left=True),
            # -o addopts: pyproject's pytest-xdist options are for CI's CPUs; the GPU machine's pytest has no xdist
            Step("gpu-tests", (180, 260), [py, "-m", "pytest", "-q", "-s", "-o", "addopts=-ra", str(REPO / "tests/gpu"),
                                           "--junitxml", str(work / "gpu-tests.xml")],
                 "tests/gpu: both backends train on the GPU; fused kernels, autocast, runtime facts",
                 junit=str(work / "gpu-tests.xml"), if_time_left=True),
        ]
        return plan
    if phase == 2:
        plan = Plan(2, budget_s or PHASE_BUDGET_S[2])
        plan.steps = [
            build,
            Step("scaling", (150, 250), harness + common + ["--out", str(work / "scaling")] + budget
                 + ([] if dry else ["--phases", "scaling", "--warmup", "1", "--timed", "2"]),
                 "token scaling 1,024-8,192 on 4 of 40 layers (per-layer figures)", needs=("build-model",)),
            Step("ceilings", (150, 300), harness + common + ["--out", str(work / "ceilings")] + budget
                 + (["--seq-lens", "512"] if dry else ["--phases", "ceilings"]),
                 "longest length at batch 2 under 16/24/48 GB caps, 40 layers", needs=("build-model",),
                 if_time_left=True),
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

    from benchmarks.gpu.scrub import TEXT_SUFFIXES, scrub_text

    data = path.read_bytes()
    if path.suffix in TEXT_SUFFIXES:
        data = scrub_text(data.decode("utf-8", errors="replace"), xml=path.suffix == ".xml").encode()
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


def headline_rows(result_dir: Path) -> list[dict]:
    """The harness's rows, plus the progress row of a worker that was still running when the step
    was stopped (the harness had no time to collect it): a figure marked partial beats none."""
    rows = []
    path = result_dir / "results.jsonl"
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    names = {r.get("name") for r in rows}
    for left in sorted((result_dir / "specs").glob("*.row.json")):
        try:
            row = json.loads(left.read_text())
        except (OSError, ValueError):
            continue
        if row.get("name") not in names:
            row["status"] = "partial" if row.get("status") in ("partial", "ok") else row.get("status")
            row.setdefault("error", "the step was stopped while this worker ran")
            rows.append(row)
    return rows


def _peaks(mem: dict | None) -> str:
    """'allocated / reserved' GiB of one peak window ('-' where there is none; CPU: peak RSS / -)."""
    if not mem:
        return "-"
    return f"{_f(mem.get('peak_allocated_gib', mem.get('peak_rss_gib')))} / {_f(mem.get('peak_reserved_gib'))}"


def _headline_lines(work: Path, dry: bool) -> list[str]:
    rows = headline_rows(work / "headline")
    if not rows:
        return []
    lines = ["", "| config | status | trained tok/s | all tok/s | step s (median) | spread | timed steps | first step s "
             "| first-step peak GiB (alloc / reserved) | steady peak GiB (alloc / reserved) | torch | activation "
             "| compile | fused |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    by, partial = {}, False
    for r in rows:
        tp, st, mem = r.get("throughput") or {}, r.get("steps") or {}, r.get("memory") or {}
        s = r.get("settings") or {}
        torch_v = (r.get("torch") or {}).get("version") or ((r.get("env") or {}).get("versions") or {}).get("torch")
        if tp.get("tokens_per_s_trained") and r.get("status") in ("ok", "partial"):
            by[r.get("backend")] = tp["tokens_per_s_trained"]
            partial |= r.get("status") == "partial"
        choice = st.get("timed_choice") or {}
        n = f"{st.get('n', '-')}" + (f" (chosen: {choice['from_step_s']:.3g} s warm-up step, {choice['left_s']:.0f} s "
                                     "left)" if choice.get("auto") else "")
        spread = st.get("spread_rel")
        lines.append(f"| {r.get('name')} | {r.get('status')} | {_f(tp.get('tokens_per_s_trained'))} | "
                     f"{_f(tp.get('tokens_per_s_all'))} | {_f(st.get('median_s'))} | "
                     f"{'-' if spread is None else f'{100 * spread:.1f} %'} | {n} | "
                     f"{_f(st.get('first_step_s'))} | {_peaks(mem.get('first_step'))} | {_peaks(mem.get('steady'))} | "
                     f"{torch_v or '-'} | {s.get('activation_dtype')} | {s.get('compile')} | "
                     f"{s.get('fused_lora_kernels')} |")
    lines.append("\nspread: (max - min) / median of the timed steps. Memory peaks: the first step (the fast path's "
                 "compile) and the steps after it, each window opened after `gc.collect()` + `empty_cache()` on both "
                 "backends.")
    if dry:
        lines.append("CPU, tiny model (hidden 64, 2 layers): tokens/s, step times and memory above are NOT MEANINGFUL "
                     "(CPU peak RSS in the memory columns); they only show the plan runs end to end.")
        if by.get("unsloth") and by.get("peft"):
            lines.append(f"fast path / baseline on this CPU: {by['unsloth'] / by['peft']:.2f}x (not meaningful)")
    elif by.get("unsloth") and by.get("peft"):
        ratio = by["unsloth"] / by["peft"]
        lines.append(f"\nfast path / baseline, trained tokens/s: {ratio:.2f}x (from partial rows: the steps that "
                     "finished before the limit)" if partial else
                     f"\nfast path / baseline, trained tokens/s: **{ratio:.2f}x**")
    return lines


def _parity_lines(work: Path) -> list[str]:
    path = work / "parity" / "parity.json"
    if not path.is_file():
        return []
    p = json.loads(path.read_text())
    if p.get("error"):
        return ["", f"parity: FAIL ({p['error']})"]
    g = p.get("grads") or {}
    losses = p.get("losses") or {}
    return ["", f"parity (first-step LoRA gradients, {g.get('tensors')} tensors): "
                f"{'PASS' if p.get('ok') else 'FAIL'}; worst cosine {_f(g.get('worst_cosine'))} (needs >= "
                f"{g.get('cos_min')}), worst relative norm gap {_f(g.get('worst_rel_norm_gap'))} (needs <= "
                f"{g.get('rel_norm_max')})" + (f"; failing: {', '.join(g.get('failing', [])[:4])}"
                                                 if g.get("failing") else ""),
            f"losses beside them (not the verdict): unsloth {[round(x, 4) for x in losses.get('unsloth', [])]}, "
            f"peft {[round(x, 4) for x in losses.get('peft', [])]}, max relative gap {_f(p.get('max_rel_loss_gap'))}"]


def _f(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def write_summary(plan: Plan, work: Path, out: Path, meta: dict) -> None:
    dry = bool(meta.get("dry"))
    title = f"# kitrec_fast GPU phase {plan.phase}"
    if dry:
        title += (" (CPU dry run, tiny model: the times and figures below come from a CPU and are not "
                  "meaningful; the estimates are the GPU's)")
    kernels = next((s for s in plan.steps if s.verdict), None)
    lines = [title, "", _fused_verdict(work, kernels)[1] + ("; on CPU through Triton's interpreter, not the GPU's kernels"
                                                             if dry and kernels and kernels.status == "ok" else ""),
             "", f"device: {meta.get('device')}  torch: {meta.get('torch')}  commit: {meta.get('commit')}  "
                        f"started: {meta.get('started')}",
             f"budget {plan.budget_s:.0f} s; GPU estimate of {', '.join(s.name for s in plan.promised)}: "
             f"{plan.estimate_s:.0f} s ({sum(s.est_range[0] for s in plan.promised):.0f}-{plan.worst_s:.0f} s), "
             f"the rest if time is left; elapsed "
             f"{meta.get('elapsed_s', 0):.0f} s; everything is in {ARCHIVE}"]
    sc = meta.get("scratch") or {}
    if sc:
        seen = ", ".join(f"{c['path']} {c['free_bytes'] / 1e9:.1f} GB free" if c.get("free_bytes") is not None
                         else f"{c['path']} ({c.get('why')})" for c in sc.get("candidates", []))
        lines += ["", f"scratch folder for the model: {sc.get('path')} (the writable candidate with the most free "
                      f"space: {seen}); df -h before the build:", "", *[f"    {x}" for x in sc.get("df", "").splitlines()]]
    if dry:
        lines += ["", "Not meaningful on this CPU: " + "; ".join(CPU_MEANINGLESS) + ". What the dry run shows: every "
                  "step runs, in order, within its limit, and leaves its log and results in the archive."]
    if meta.get("only"):
        lines.append(f"--only {' '.join(meta['only'])}" + "".join(f"; added {name} (needed by {why})"
                                                                  for name, why in plan.added.items()))
    lines += ["", "| step | what | GPU est s (low-high) | limit at start s | status | wall s | wall / est | note |",
              "|---|---|---|---|---|---|---|---|"]
    for s in plan.steps:
        ratio = "-" if dry or s.wall_s is None or s.status == "skipped" else f"{s.wall_s / s.est_s:.2f}"
        lines.append(f"| {s.name} | {s.what} | {s.est_s:.0f} ({s.est_range[0]:.0f}-{s.est_range[1]:.0f}) | "
                     f"{_f(s.budget_s)} | {s.status} | {_f(s.wall_s)} | {ratio} | {s.note} |")
    lines += _parity_lines(work)
    lines += _headline_lines(work, dry)
    from kitrec_fast.fsio import atomic_write_text

    atomic_write_text(out / SUMMARY, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------------
# running


_RUNNING: list[subprocess.Popen] = []  # the step now running (stopped with us on SIGTERM)


def _start(argv: list[str], log: Path, env: dict) -> subprocess.Popen:
    """The step in a new process group (its own session): everything it starts inherits the group."""
    f = open(log, "w")
    f.write(f"$ {shlex.join(argv)}\n")
    f.flush()
    proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
    _RUNNING[:] = [proc]
    return proc


def _on_term(signum, frame) -> None:
    """Stopped from outside (a command limit): the running step's group goes with us, not on as orphans."""
    from benchmarks.gpu.procs import stop_group

    for proc in _RUNNING:
        stop_group(proc.pid, grace_s=2.0, wait_s=5.0)
    raise SystemExit(128 + signum)


def _wait(proc: subprocess.Popen, timeout: float) -> int | None:
    """The step's exit status, or None when it was stopped at ``timeout``. Either way nothing of
    its process group is left when this returns (a worker it left behind would keep the GPU)."""
    from benchmarks.gpu.procs import group_members, stop_group

    try:
        rc = proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        rc = None
    if rc is None or group_members(proc.pid):
        left = stop_group(proc.pid)
        if left:
            print(f"[phases] processes {left} of a stopped step did not end", file=sys.stderr, flush=True)
    proc.wait()
    return rc


def _junit_skipped(path: str | None) -> str | None:
    """'all N tests skipped (reason)' when a pytest report says nothing ran, else None."""
    if not path or not Path(path).is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None
    tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    if tests == 0 or skipped < tests:
        return None
    first = suite.find(".//skipped")
    reason = (first.get("message") or "").strip() if first is not None else ""
    return f"all {tests} tests skipped" + (f" ({reason})" if reason else "")


def run_plan(plan: Plan, work: Path, out: Path, meta: dict, env: dict) -> int:
    t0 = time.monotonic()
    root = f"{meta['slug']}-phase{plan.phase}"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    by_name = {s.name: s for s in plan.steps}

    def left() -> float:
        return plan.budget_s - (time.monotonic() - t0)

    def finish() -> None:
        meta["elapsed_s"] = time.monotonic() - t0
        (work / "plan.json").write_text(json.dumps({"meta": meta, "phase": plan.phase, "budget_s": plan.budget_s,
                                                    "estimate_s": plan.estimate_s, "added": plan.added,
                                                    "steps": [{**s.__dict__, "est_s": s.est_s} for s in plan.steps]},
                                                   indent=1) + "\n")
        write_summary(plan, work, out, meta)
        pack(work, out, root)

    finish()
    failed = False
    for step in plan.steps:
        lost = [n for n in step.needs if n in by_name and by_name[n].status != "ok"]
        min_s = step.est_range[0] if step.min_s is None else step.min_s
        if meta.get("dry"):
            min_s = 1.0  # the estimates are the GPU's: they say nothing about the CPU's time
        if lost:
            step.status, step.note = "skipped", f"{lost[0]} did not finish"
        elif left() - plan.reserve_s < min_s:
            step.status, step.note = "skipped", f"budget: {left():.0f} s left, needs at least {min_s:.0f} s"
        if step.status == "skipped":
            finish()
            continue
        # the limit is what is left of the phase now, when the step starts (not when the plan was made)
        step.budget_s = int(left() - plan.reserve_s)
        argv = [a.replace("{left}", str(step.budget_s)) for a in step.argv]
        print(f"[phase {plan.phase}] {step.name} (est {step.est_s:.0f} s, limit {step.budget_s} s)",
              file=sys.stderr, flush=True)
        started = time.monotonic()
        rc = _wait(_start(argv, work / "logs" / f"{step.name}.log", {**env, **step.env}), step.budget_s)
        step.rc, step.wall_s = rc, time.monotonic() - started
        step.status = "ok" if rc == 0 else ("timeout" if rc is None else "failed")
        skipped = _junit_skipped(step.junit) if rc == 0 else None
        if skipped:
            step.status, step.note = "skipped", skipped
        if step.verdict:
            status, line = _fused_verdict(work, step)
            step.note = f"fused_kernels: {status}"
            if status == "UNKNOWN" and meta.get("dry"):
                # on CPU a doctor without this check (or one that cannot run it) says nothing about a GPU
                step.status, step.note = "skipped", "no fused_kernels verdict on this CPU (see the log)"
                finish()
                continue
        failed |= rc != 0
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
    ap.add_argument("--only", nargs="+", metavar="STEP", default=None,
                    help="run only these steps (and the steps they need, e.g. build-model for headline)")
    args = ap.parse_args(argv)
    # one command on the GPU machine may run 600 s; a CPU dry run has no such limit (a slow CI may need more)
    top = float("inf") if args.cpu_dry_run else MAX_PHASE_BUDGET_S
    if args.budget_s is not None and not 0 < args.budget_s <= top:
        ap.error(f"--budget-s: 1-{MAX_PHASE_BUDGET_S} s (one command may run 600 s), got {args.budget_s:g}")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="kitrec-phase-"))
    # the largest writable disk among the candidates takes the model (29.5 GB on the GPU machine's 64 GiB)
    scratch, seen = pick_scratch(scratch_candidates())
    if args.cpu_dry_run:
        # The tiny model is rebuilt by every dry run (seconds) in its own work folder: a build an earlier
        # dry run left in the shared scratch folder would be reused, and the build and link would not run.
        scratch = str(work)
    plan = build_plan(args.phase, work, args.cpu_dry_run, args.budget_s, scratch)
    if args.only:
        plan.select(args.only)
    if args.plan:
        for s in plan.steps:
            added = f" (added: needed by {plan.added[s.name]})" if s.name in plan.added else ""
            later = " [if time is left]" if s.if_time_left else ""
            print(f"{s.name:12s} ~{s.est_s:4.0f} s ({s.est_range[0]:.0f}-{s.est_range[1]:.0f}){added}{later}  {s.what}")
        print(f"one at a time, in this order; {', '.join(s.name for s in plan.promised)}: ~{plan.estimate_s:.0f} s "
              f"(at most {plan.worst_s:.0f} s) of a {plan.budget_s:.0f} s budget; a step starts only if its low "
              "estimate still fits")
        print(f"the model goes to {scratch}: the writable candidate with the most free space ("
              + ", ".join(f"{c['path']} {c['free_bytes'] / 1e9:.0f} GB" if c.get("free_bytes") is not None
                          else f"{c['path']} {c['why']}" for c in seen) + ")")
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
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = None
    from benchmarks.gpu.build_arch_model import free_space_line

    meta = {"device": device, "slug": slug(device), "commit": commit, "dry": args.cpu_dry_run, "only": args.only,
            "scratch": {"path": scratch, "candidates": seen, "df": free_space_line(scratch)},
            "torch": torch_version,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if commit:
        env["KITREC_GIT_COMMIT"] = commit
    signal.signal(signal.SIGTERM, _on_term)
    return run_plan(plan, work, Path(args.out), meta, env)


if __name__ == "__main__":
    sys.exit(main())

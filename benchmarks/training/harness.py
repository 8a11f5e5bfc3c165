"""Benchmark driver: a matrix of configurations, each run by ``worker.py`` in its own fresh process.

    # CPU, tiny model: the pipeline end to end (NOT a performance measurement)
    python benchmarks/training/harness.py --preset cpu-report --out benchmarks/results/cpu
    # GPU machine (see benchmarks/gpu/run_all.sh, which also installs the wheels)
    python benchmarks/training/harness.py --preset gpu --out "$OUT/results" --budget-s 480

Every configuration of a matrix shares the data order, seed, sequence length, batch size and LoRA
settings of its counterpart on the other backend: the harness fixes them in the spec it hands to
each worker, and the worker records a fingerprint of every batch so the report can check it.

Output directory::

    calibration.json    dense matmul rate of this card (the MFU reference), measured first
    specs/NAME.json     the exact spec each worker ran
    logs/NAME.log       each worker's stdout+stderr
    results.jsonl       one row per configuration (ok / oom / error / timeout / skipped)
    run.json            the command, preset, budget, model provenance
    results.md, *.png   written by benchmarks/training/report.py

The harness never imports unsloth (nor the backends): only the workers do.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))  # run as a script: ``benchmarks.gpu`` (process control, scrubbing) importable
WORKER = HERE / "worker.py"
BUILDER = REPO / "benchmarks" / "gpu" / "build_arch_model.py"
BACKENDS = ("unsloth", "peft")
TINY = "testkit:tiny-qwen3"
REAL = "Qwen/Qwen3-14B"
FULL_LAYERS = 40
SCALING_LENS = (1024, 2048, 4096, 5120, 8192)
CEILING_LENS = (1024, 2048, 3072, 4096, 5120, 6144, 8192, 10240, 12288, 16384)
CAPS_GIB = (16, 24, 48)
# Trained share of a fixed-length row (the answer, at the end; the prompt before it is masked).
# KitREC rows are a long masked prompt (histories + 50 candidates) and a short trained answer
# (reasoning + one JSON object): the synthetic rows through the real pipeline at max_length 5,120
# train a median of ~615 tokens, i.e. 12% of 5,120. Override with --trained-fraction.
TRAINED_FRACTION = 0.12
TIMED_MIN, TIMED_MAX = 3, 10  # --timed auto's bounds (the same as measure.py's; the harness never imports torch)


def timed_arg(text: str) -> int | str:
    """``--timed``: a step count, or ``auto`` (chosen by each worker from its warm-up, see worker.py)."""
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"a positive step count or 'auto', got {text!r}")
    return n


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def source_fingerprint() -> str:
    """sha256 over the code that runs (kitrec_fast + benchmarks), for trees copied without .git."""
    h = hashlib.sha256()
    for root in (REPO / "kitrec_fast", REPO / "benchmarks"):
        for p in sorted(root.rglob("*.py")):
            h.update(str(p.relative_to(REPO)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("KITREC_GIT_COMMIT")


# --------------------------------------------------------------------------------------------------
# models


def hub_reachable(model_id: str, timeout: float = 8.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(model_id, timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not reachable from here"
        return False


def build_arch(out: Path, layers: int | None, device: str, link_from: Path | None, log: Path,
               dry_run: bool = False) -> Path:
    """Run build_arch_model.py in a subprocess (so this process never holds a CUDA context)."""
    if dry_run:
        return out
    cmd = [sys.executable, str(BUILDER), "--out", str(out), "--device", device]
    if layers is not None:
        cmd += ["--layers", str(layers)]
    if link_from is not None:
        cmd += ["--link-from", str(link_from)]
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO).returncode
    if rc != 0:
        raise SystemExit(f"building the architecture-only model failed (rc={rc}); see {log}")
    return out


def resolve_models(args, out: Path) -> dict[str, dict[str, Any]]:
    """'full' and (when asked for) 'reduced' model entries: path, kind, label, layers."""
    logs = out / "logs"
    choice = args.model
    models: dict[str, dict[str, Any]] = {}
    if choice == "tiny":
        models["full"] = {"path": TINY, "kind": "tiny-random", "label": "tiny Qwen3 (hidden 64, 2 layers, random)",
                          "layers": 2, "full_layers": 2}
        return models
    if choice == "auto" and hub_reachable(REAL):
        choice = REAL
    if choice in ("auto", "arch"):
        need_full = args.preset != "gpu" or bool({"headline", "ceilings", "pipeline"} & set(args.phases))
        arch = Path(args.arch_dir)
        if need_full:
            build_arch(arch, None, args.arch_device, None, logs / "build_arch.log", args.dry_run)
            models["full"] = {"path": str(arch), "kind": "arch-random",
                              "label": "Qwen3-14B architecture, random weights", "layers": FULL_LAYERS,
                              "full_layers": FULL_LAYERS}
        if args.reduced_layers and (args.preset != "gpu" or "scaling" in args.phases):
            n = args.reduced_layers
            red = Path(f"{args.arch_dir}-l{n}")
            build_arch(red, n, args.arch_device, arch if need_full else None, logs / "build_arch.log", args.dry_run)
            models["reduced"] = {"path": str(red), "kind": "arch-random",
                                 "label": f"Qwen3-14B architecture, random weights, {n} of {FULL_LAYERS} layers",
                                 "layers": n, "full_layers": FULL_LAYERS}
        return models
    models["full"] = {"path": choice, "kind": "checkpoint", "label": choice, "layers": None, "full_layers": None}
    return models


# --------------------------------------------------------------------------------------------------
# data (pipeline mode): prepared once here, loaded by every worker from disk


def _recipe_kind_domain(recipe: str) -> tuple[str, str, str]:
    family, _, s = recipe.partition("_set")
    kind, _, domain = family.partition("_")
    return kind or "dualft", domain or "music", (s or "a").upper()


def prepare_pipeline_data(args, out: Path, max_length: int, tokenizer_src: str, n_rows_needed: int,
                          batch_size: int) -> dict[str, Any]:
    """Real pipeline output (truncated, masked KitREC rows) saved under out/data; returns the data spec.

    The order mimics the product's group_by_length sampler (a seeded shuffle, then mega-batches of
    50 batches sorted by length, longest first) and is fixed here, once, for both backends.
    """
    from kitrec_fast.config import apply_overrides, config_from_dict
    from kitrec_fast.data.pipeline import prepare
    from kitrec_fast.recipes import load_recipe
    from kitrec_fast.render.tokenizer import load_tokenizer

    raw_cfg = apply_overrides(load_recipe(args.recipe), {
        "data.max_length": str(max_length), "data.on_bad_row": "skip", "data.val_fraction": "0.0"})
    dcfg = config_from_dict(raw_cfg).data
    source = args.pipeline_source
    rows = None
    if source == "synthetic":
        from kitrec_fast.data.synth import generate_rows

        kind, domain, cset = _recipe_kind_domain(args.recipe)
        rows = generate_rows(args.pipeline_rows, seed=args.seed, domain=domain, kind=kind, candidate_set=cset)
        label = f"synthetic KitREC rows (kitrec_fast.data.synth, {kind}/{domain}/set {cset}, seed {args.seed})"
    elif source == "recipe":
        dcfg.limit = args.pipeline_rows
        label = f"{dcfg.dataset} (the recipe's dataset, first {args.pipeline_rows} rows)"
    else:
        dcfg.dataset, dcfg.limit = source, args.pipeline_rows
        label = source
    tok = load_tokenizer(tokenizer_src)
    prepared = prepare(dcfg, tok, rows=rows)
    ddir = Path(args.work_dir or tempfile.mkdtemp(prefix="kitrec-bench-data-")) / f"pipeline-L{max_length}"
    # only the train split is needed (val_fraction 0); an empty saved split does not load back
    prepared.train.save_to_disk(str(ddir / "train"))
    lengths = list(prepared.train["length"])
    if not lengths:
        raise RuntimeError(f"the pipeline kept no rows at max_length={max_length} "
                           f"(skipped: {prepared.report.get('skipped_by_stage')})")
    rng = random.Random(args.seed)
    perm = list(range(len(lengths)))
    rng.shuffle(perm)
    mega = 50 * batch_size
    order: list[int] = []
    for i in range(0, len(perm), mega):
        order += sorted(perm[i:i + mega], key=lambda j: -lengths[j])
    rep = prepared.report
    return {"mode": "pipeline", "dir": str(ddir), "order": order[: max(n_rows_needed, 1)], "source": label,
            "max_length": max_length, "rows_available": len(lengths),
            "tokens_after": rep.get("tokens", {}).get("after"), "tokens_trained": rep.get("tokens", {}).get("trained"),
            "rows_skipped": rep.get("rows", {}).get("skipped")}


# --------------------------------------------------------------------------------------------------
# the matrix


def config_specs(args, models: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The ordered list of configurations (both backends for each), highest priority first."""
    specs: list[dict[str, Any]] = []
    backends = args.backends
    common = {"recipe": args.recipe, "batch_size": args.batch_size, "seed": args.seed,
              "overrides": dict(kv.split("=", 1) for kv in args.override),
              "context_reserve_gib": args.context_reserve_gib}

    def add(group: str, model_key: str, data: dict[str, Any], max_len: int, warm: int, timed: int,
            est_s: float | dict[str, float], **extra) -> None:
        m = models[model_key]
        for backend in backends:
            tag = data.get("seq_len") or data.get("max_length")
            name = f"{group}-{backend}-L{tag}-b{args.batch_size}-l{m['layers'] or 'x'}"
            # auto: the trainer gets room for the most steps; the worker times as many as fit its limit
            hi = max(TIMED_MIN, args.timed_max)
            steps = {"timed_steps": hi, "timed_auto": [TIMED_MIN, hi]} if timed == "auto" else {"timed_steps": timed}
            if extra.get("mem_cap_gib"):
                name += f"-cap{extra['mem_cap_gib']:g}"
            specs.append({**common, "name": name, "group": group, "backend": backend, "model": m["path"],
                          "model_kind": m["kind"], "model_label": m["label"], "full_layers": m["full_layers"],
                          "data": data, "max_seq_length": max_len, "warmup_steps": warm, **steps,
                          "est_s": est_s[backend] if isinstance(est_s, dict) else est_s, "kind": "throughput",
                          **extra})

    frac = args.trained_fraction
    if args.preset == "gpu":
        phases = args.phases
        # 1. headline: the full geometry at the recipe's 2 x 5,120
        if "full" in models and "headline" in phases:
            # required: both backends run even past the budget (the comparison needs the pair)
            # per backend: import ~20 s + nf4 load 40-70 s + steps, and on the fast path the first
            # step's block compile 40-120 s (see gpu_phases.build_plan)
            add("headline", "full", {"mode": "fixed", "seq_len": 5120, "trained_fraction": frac}, 5120,
                args.warmup, args.timed, {"unsloth": 175, "peft": 105}, required=True)
        # 2. scaling curve over L on the reduced-depth model (per-layer figures). Lengths spread out
        #    first, so a budget cut still leaves a curve's ends rather than only its short half.
        if "reduced" in models and "scaling" in phases:
            lens = sorted(args.seq_lens)
            spread = [lens[0], lens[-1]] + [x for x in lens[1:-1]]
            for L in dict.fromkeys(spread):
                add("scaling", "reduced", {"mode": "fixed", "seq_len": L, "trained_fraction": frac}, L,
                    args.warmup, args.timed, 45)
        # 3. memory ceilings on the full model: one process per backend, caps ascending
        if "full" in models and args.ceilings and "ceilings" in phases:
            m = models["full"]
            for backend in backends:
                specs.append({**common, "name": f"ceiling-{backend}-b{args.batch_size}-l{m['layers']}",
                              "group": "ceiling", "backend": backend, "model": m["path"], "model_kind": m["kind"],
                              "model_label": m["label"], "full_layers": m["full_layers"], "kind": "ceiling",
                              "data": {"mode": "fixed", "trained_fraction": frac}, "caps_gib": list(args.caps),
                              "lengths": list(args.ceiling_lens), "max_seq_length": max(args.ceiling_lens),
                              "ceiling_steps": 2, "est_s": 200})
        # 4. the recipe's real pipeline output
        if "full" in models and args.pipeline and "pipeline" in phases:
            add("pipeline", "full", {"mode": "pipeline-pending", "max_length": args.pipeline_max_length},
                args.pipeline_max_length, args.warmup, args.timed, 150)
        return specs

    key = "full"
    for L in args.seq_lens:
        add("fixed", key, {"mode": "fixed", "seq_len": L, "trained_fraction": frac}, L, args.warmup, args.timed, 60)
    if args.pipeline:
        add("pipeline", key, {"mode": "pipeline-pending", "max_length": args.pipeline_max_length},
            args.pipeline_max_length, args.warmup, args.timed, 60)
    return specs


# --------------------------------------------------------------------------------------------------
# running


# Workers now running (a SIGTERM to the harness stops them) and whether the harness was told to stop.
_ACTIVE: set[subprocess.Popen] = set()
_STOP = threading.Event()


def _on_stop(signum, frame) -> None:
    """SIGTERM/SIGINT (the phase runner at its limit signals the whole group): stop the workers now
    (each already wrote its row after its last finished step), collect their rows, start no more."""
    _STOP.set()
    from benchmarks.gpu.procs import kill_tree

    for proc in list(_ACTIVE):
        kill_tree(proc, wait=False)


def run_worker(argv: list[str], log: Path, timeout: float | None, env: dict[str, str]) -> tuple[int | None, float]:
    """Run one worker; ``None`` as the status when it was stopped (its limit, or the harness's stop).

    The worker stays in the harness's process group (no new session), so whoever stops the
    harness's group stops its workers too; on its own limit the harness kills the worker and
    everything it started (compile helpers) itself.
    """
    from benchmarks.gpu.procs import kill_tree

    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        _ACTIVE.add(proc)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            rc = None
        finally:
            _ACTIVE.discard(proc)
    return (None if _STOP.is_set() else rc), time.perf_counter() - t0


def collect_row(row_path: Path, rc: int | None, spec: dict[str, Any], log: Path) -> dict[str, Any]:
    """The worker's row. A worker writes it after every step, so one stopped at its limit leaves a
    row with the steps that finished: kept, marked ``partial``. No row at all: timeout or error."""
    if row_path.is_file():
        row = json.loads(row_path.read_text())
        row_path.unlink()
        if rc is None:  # stopped at the limit
            if row.get("status") == "partial":
                done = (row.get("steps") or {}).get("done", 0)
                planned = (row.get("steps") or {}).get("timed") or spec.get("timed_steps", 0)
                row["error"] = (f"stopped at the time limit after {done} of "
                                f"{spec.get('warmup_steps', 0) + planned} steps "
                                "(partial: figures from the steps that finished)")
            else:
                row["status"], row["error"] = "timeout", "killed at the time limit (partial result)"
        return row
    return {"schema": "kitrec_fast.bench/v1", "name": spec["name"], "kind": spec["kind"], "backend": spec["backend"],
            "status": "timeout" if rc is None else "error", "spec": spec,
            "error": "killed at the time limit" if rc is None else f"worker exited {rc} without a result",
            "log_tail": _tail(log)}


def required_timeout(spec: dict[str, Any], remaining: list[dict[str, Any]], budget_left: float) -> float:
    """A required configuration's share of what is left: in proportion to its estimate among the
    required ones still to run (the fast path compiles, so it gets the larger share of the pair)."""
    ests = [float(s.get("est_s") or 1.0) for s in remaining if s.get("required")]
    return max(budget_left, 1.0) * float(spec.get("est_s") or 1.0) / max(sum(ests), 1e-9)


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--preset", choices=("cpu-test", "cpu-report", "gpu", "custom"), default="custom",
                    help="cpu-test: 2 timed steps per backend, tiny model; cpu-report: tiny model, a few lengths "
                         "and the pipeline; gpu: headline 2x5120 + scaling (reduced depth) + ceilings + pipeline")
    ap.add_argument("--out", required=True, help="Result directory.")
    ap.add_argument("--model", default=None,
                    help="tiny | arch (Qwen3-14B geometry, random weights) | auto (the real checkpoint if the Hub "
                         "is reachable, else arch) | a Hub id or directory")
    ap.add_argument("--arch-dir", default="/tmp/kitrec-qwen3-14b-arch")
    ap.add_argument("--arch-device", default="cpu", help="where the builder draws random weights (cuda is faster)")
    ap.add_argument("--reduced-layers", type=int, default=None,
                    help="also build/run a model with only this many decoder layers (scaling sweep); "
                         "reported as per-layer figures, never as the full model")
    ap.add_argument("--phases", default="headline,scaling,ceilings,pipeline",
                    help="gpu preset: which parts run, in priority order (headline: full depth at 2 x 5,120; "
                         "scaling: reduced depth over --seq-lens; ceilings: memory caps; pipeline: real rows)")
    ap.add_argument("--work-dir", default=None, help="prepared pipeline data (default: a temporary folder)")
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--recipe", default="dualft_music_seta")
    ap.add_argument("--seq-lens", type=int, nargs="+", default=None)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (Unsloth compiles on the first)")
    ap.add_argument("--timed", type=timed_arg, default=None,
                    help=f"timed steps, or 'auto': {TIMED_MIN}-{TIMED_MAX}, as many as the warm-up's last step says "
                         "fit the worker's time limit (needs --warmup >= 1)")
    ap.add_argument("--timed-max", type=int, default=TIMED_MAX,
                    help=f"--timed auto's most steps (at least {TIMED_MIN}; the CPU dry run keeps it at {TIMED_MIN})")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--trained-fraction", type=float, default=TRAINED_FRACTION)
    ap.add_argument("--pipeline", action=argparse.BooleanOptionalAction, default=None,
                    help="also run the recipe's real pipeline output")
    ap.add_argument("--pipeline-source", default="synthetic",
                    help="synthetic | recipe (the recipe's Hub dataset) | a local KitREC file")
    ap.add_argument("--pipeline-rows", type=int, default=64)
    ap.add_argument("--pipeline-max-length", type=int, default=None)
    ap.add_argument("--ceilings", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--caps", type=float, nargs="+", default=list(CAPS_GIB), help="emulated card sizes, GiB")
    ap.add_argument("--ceiling-lens", type=int, nargs="+", default=list(CEILING_LENS))
    ap.add_argument("--context-reserve-gib", type=float, default=0.5,
                    help="part of an emulated card taken by the CUDA context (outside PyTorch's allocator)")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe override applied to every configuration (e.g. train.label_smoothing=0); "
                         "named --override so that --set means Set A/B everywhere")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="wall-clock budget for the matrix; configurations that would not fit are skipped")
    ap.add_argument("--timeout-s", type=float, default=900, help="per-configuration limit")
    ap.add_argument("--jobs", type=int, default=1, help="parallel workers (CPU only: timings on one GPU must not overlap)")
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="print the matrix and exit (builds and runs nothing)")
    args = ap.parse_args(argv)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(args.phases) - {"headline", "scaling", "ceilings", "pipeline"}
    if unknown:
        ap.error(f"--phases: unknown {sorted(unknown)}")

    preset_defaults = {
        "cpu-test": dict(model="tiny", seq_lens=[256], warmup=0, timed=2, pipeline=False),
        # real KitREC rows need ~2,400+ tokens even cut to 20 candidates, hence 3,072 on CPU
        "cpu-report": dict(model="tiny", seq_lens=[256, 1024], warmup=1, timed=3, pipeline=True,
                           pipeline_max_length=3072),
        "gpu": dict(model="arch", seq_lens=list(SCALING_LENS), warmup=2, timed=3, pipeline=True,
                    pipeline_max_length=5120),
        "custom": dict(model="tiny", seq_lens=[512], warmup=1, timed=3, pipeline=False, pipeline_max_length=5120),
    }[args.preset]
    for k, v in preset_defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.timed == "auto" and args.warmup < 1:
        ap.error("--timed auto: needs --warmup >= 1 (the count is chosen from the last warm-up step's time)")
    if args.preset == "gpu" and args.reduced_layers is None:
        args.reduced_layers = 4

    out = Path(args.out)
    if args.dry_run:
        for spec in config_specs(args, resolve_models(args, out)):
            d = spec["data"]
            print(f"{spec['name']:44s} {spec['kind']:10s} model={spec['model']} data={d.get('mode')} "
                  f"L={d.get('seq_len') or d.get('max_length') or spec.get('lengths')} "
                  f"warmup={spec.get('warmup_steps', '-')} timed={spec.get('timed_steps', '-')} "
                  f"caps={spec.get('caps_gib', '-')} est~{spec['est_s']}s")
        return 0
    (out / "specs").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    results.write_text("")  # one run per directory: stale rows would be reported as this run's
    t_run = time.perf_counter()
    env = dict(os.environ)
    commit = git_commit()
    if commit:
        env["KITREC_GIT_COMMIT"] = commit
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_stop)

    # 1. the MFU reference, in a fresh process before anything else uses the card (~10 s on a GPU)
    cal_path = out / "calibration.json"
    rc, _ = run_worker([sys.executable, str(WORKER), "--calibrate", "--out", str(cal_path)],
                       out / "logs" / "calibrate.log", min(120.0, args.budget_s or 120.0), env)
    calibration = json.loads(cal_path.read_text()) if rc == 0 and cal_path.is_file() else None
    on_gpu = bool(calibration) and not str(calibration.get("device", "")).startswith("CPU")
    if args.jobs > 1 and on_gpu:
        print("[harness] --jobs > 1 ignored on a GPU: overlapping runs would corrupt the timings", file=sys.stderr)
        args.jobs = 1

    # 2. models and the matrix
    models = resolve_models(args, out)
    specs = config_specs(args, models)
    meta = {"command": shlex.join([sys.executable] + sys.argv), "preset": args.preset, "budget_s": args.budget_s,
            "git_commit": commit, "source_sha": source_fingerprint(), "models": models,
            "calibration": calibration, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "on_gpu": on_gpu, "configs": [s["name"] for s in specs]}
    (out / "run.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")

    # 3. pipeline data, prepared once for all configurations that use it
    pipeline_data: dict[int, dict[str, Any] | str] = {}
    for s in specs:
        if s["data"].get("mode") != "pipeline-pending":
            continue
        L = int(s["data"]["max_length"])
        if L not in pipeline_data:
            tok_src = "offline:qwen3" if models["full"]["path"] == TINY else models["full"]["path"]
            try:
                pipeline_data[L] = prepare_pipeline_data(args, out, L, tok_src,
                                                          (s["warmup_steps"] + s["timed_steps"]) * args.batch_size,
                                                          args.batch_size)
            except Exception as exc:  # noqa: BLE001 - a data failure skips these configs, not the run
                pipeline_data[L] = f"pipeline data preparation failed: {type(exc).__name__}: {exc}"[:500]
        d = pipeline_data[L]
        if isinstance(d, str):
            s["skip_reason"] = d
        else:
            s["data"] = d

    # 4. run
    observed: dict[str, float] = {}

    def budget_left() -> float:
        return float("inf") if args.budget_s is None else args.budget_s - (time.perf_counter() - t_run)

    def one(spec: dict[str, Any]) -> dict[str, Any]:
        spec = {**spec, "calibration": calibration}
        name = spec["name"]
        est = observed.get(f"{spec['model']}|{spec['kind']}", spec.get("est_s", 0))
        if spec.get("skip_reason"):
            return {"schema": "kitrec_fast.bench/v1", "name": name, "kind": spec["kind"], "backend": spec["backend"],
                    "status": "skipped", "error": spec["skip_reason"], "spec": spec}
        if _STOP.is_set() or (budget_left() < est and not spec.get("required")):
            return {"schema": "kitrec_fast.bench/v1", "name": name, "kind": spec["kind"], "backend": spec["backend"],
                    "status": "skipped", "spec": spec,
                    "error": "the harness was stopped" if _STOP.is_set() else
                    f"time budget: {budget_left():.0f}s left, this configuration needs ~{est:.0f}s"}
        spec_path, row_path, log = out / "specs" / f"{name}.json", out / "specs" / f"{name}.row.json", out / "logs" / f"{name}.log"
        row_path.unlink(missing_ok=True)
        timeout = args.timeout_s
        if args.budget_s is not None:
            # within the budget; a required pair shares what is left (both backends must get a figure)
            rest = specs[[s["name"] for s in specs].index(name):]
            share = required_timeout(spec, rest, budget_left()) if spec.get("required") else budget_left()
            timeout = min(args.timeout_s, max(share, 1.0))
        spec["time_limit_s"] = timeout  # an automatic timed-step count fills it (worker.py)
        spec_path.write_text(json.dumps(spec, indent=1) + "\n")
        print(f"[harness] {name}: start (timeout {timeout:.0f}s)", file=sys.stderr, flush=True)
        rc, wall = run_worker([sys.executable, str(WORKER), "--spec", str(spec_path), "--out", str(row_path)],
                              log, timeout, env)
        observed[f"{spec['model']}|{spec['kind']}"] = max(wall, observed.get(f"{spec['model']}|{spec['kind']}", 0))
        row = collect_row(row_path, rc, spec, log)
        row["harness_wall_s"] = wall
        row["log"] = str(log.relative_to(out))
        print(f"[harness] {name}: {row['status']} in {wall:.0f}s", file=sys.stderr, flush=True)
        return row

    run_info = {"git_commit": commit, "source_sha": meta["source_sha"], "preset": args.preset,
                "started": meta["started"]}
    lock = threading.Lock()

    def one_and_save(spec: dict[str, Any]) -> dict[str, Any]:
        row = one(spec)
        row["run"] = run_info
        with lock:  # append as each finishes: a run cut short still leaves its finished rows
            with open(results, "a") as f:
                f.write(json.dumps(row, default=str) + "\n")
        return row

    if args.jobs > 1:
        with ThreadPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(one_and_save, specs))
    else:
        rows = [one_and_save(s) for s in specs]
    # final file in matrix order (parallel workers finish in any order)
    results.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    meta["wall_s"] = time.perf_counter() - t_run
    (out / "run.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")

    from benchmarks.gpu import scrub

    scrub.scrub_dir(out)  # results that get committed must not name this machine's paths
    if not args.no_report:
        from benchmarks.training import report

        report.write_report(out)
    bad = [r["name"] for r in rows if r["status"] not in ("ok", "skipped")]
    if _STOP.is_set():
        print("[harness] stopped: rows so far kept", file=sys.stderr)
    print(f"[harness] {len(rows)} rows -> {results} ({len(bad)} failed: {bad})", file=sys.stderr)
    return 0 if not bad else 2


if __name__ == "__main__":
    sys.exit(main())

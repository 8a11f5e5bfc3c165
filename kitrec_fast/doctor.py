"""``kitrec-fast doctor``: can this machine train, and with what? One table, in under 90 s.

    kitrec-fast doctor            # all checks, including a 3-step tiny training per backend
    kitrec-fast doctor --quick    # versions, CUDA, bitsandbytes' library, triton, unsloth importable
    kitrec-fast doctor --json     # the same checks as one JSON object
    kitrec-fast doctor --only fused_kernels   # Unsloth's fused LoRA functions against PEFT, alone

Checks: package versions; CUDA, the card and its compute capability; which native library
bitsandbytes loaded (the CUDA one is what 4-bit training needs); triton and the C compiler it builds
kernels with; that unsloth imports; the attention implementation each backend uses; Unsloth's fused
LoRA functions (``fused_kernels``): counted on a tiny model on a GPU, and run against PEFT on one small
layer (``backends.fused_check``: the real Triton kernels in the card's training dtype on a GPU, Triton's
interpreter in fp32 on CPU), the largest error per function; a 3-step training of a tiny Qwen3 per backend and the gap
between their losses; the card's free memory against the memory profile chosen for it. Every
backend runs in its own process (importing unsloth patches transformers and trl for the whole
process; the peft baseline's process never imports it), so this process imports neither.
Without a GPU the checks that need one are listed as "not run", with the reason.
Exit status: 1 when a check failed (with ``--only``: the one check), else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

# without them the fast path falls back (xformers: an attention option) or the triton row below says what fails
OPTIONAL = {"triton", "xformers"}
PROBE_TIMEOUT_S = 80  # each backend's process; they run side by side, so the whole doctor stays < 90 s
TRAIN_STEPS = 3
# First-step loss gap allowed between the backends' tiny trainings: both start from LoRA B = 0 (the
# adapter changes nothing yet) on the same rows, so only arithmetic differs. On CPU both run fp32 and
# agree to rounding (other rows would already differ by ~2e-3 with the tiny random model); on a GPU
# Unsloth's bf16 kernels vs the baseline's fp32 residual stream differ by about 2^-8 per rounding,
# so there the check only catches gross breakage.
LOSS_GAP_MAX = {"cpu": 1e-4, "cuda": 0.02}
NO_GPU = "needs a CUDA GPU (none here)"
ONLY = ("fused_kernels",)


@dataclass
class Check:
    name: str
    status: str  # ok | warn | FAIL | not run
    detail: str
    data: dict = field(default_factory=dict)  # the figures behind the detail (--json)


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def version_checks() -> list[Check]:
    """The versions a run directory records (``environment.json``), checked: a required one missing fails."""
    from kitrec_fast.artifacts.rundir import environment_record

    env = environment_record()
    out = [Check("python", "ok", env["python"])]
    for name, v in env["versions"].items():
        if v is None and name == "kitrec_fast":
            out.append(Check(name, "ok", "source checkout (not installed)"))
        else:
            out.append(Check(name, "ok" if v or name in OPTIONAL else "FAIL",
                             v or ("not installed (optional)" if name in OPTIONAL else "not installed")))
    return out


def cuda_check() -> tuple[Check, object]:
    import torch

    if not torch.cuda.is_available():
        return Check("CUDA", "not run", f"{NO_GPU}; torch {torch.__version__} built for CUDA "
                                        f"{torch.version.cuda or 'none'}"), None
    props = torch.cuda.get_device_properties(0)
    bf16 = torch.cuda.is_bf16_supported()
    detail = (f"{props.name}, compute capability {props.major}.{props.minor}, {props.total_memory / 2**30:.1f} GiB, "
              f"CUDA {torch.version.cuda}, bf16 {'yes' if bf16 else 'no (fp16 instead)'}")
    # Triton's kernels (Unsloth's) need compute capability 7.0 or newer.
    return Check("CUDA", "ok" if props.major >= 7 else "FAIL", detail), props


def bitsandbytes_check(on_gpu: bool) -> Check:
    """Which native library bitsandbytes loaded (``bitsandbytes/cextension.py``: ``lib`` is the CUDA
    build when one matches torch's CUDA, an error-raising stand-in when none loads, line ~398)."""
    try:
        from bitsandbytes import cextension
    except Exception as exc:  # noqa: BLE001 - whatever breaks the import is the finding
        return Check("bitsandbytes library", "FAIL", f"import failed: {type(exc).__name__}: {exc}"[:200])
    lib = cextension.lib
    path = getattr(getattr(lib, "_lib", None), "_name", None)
    if not on_gpu:
        return Check("bitsandbytes library", "not run", f"{NO_GPU}; loaded: {os.path.basename(path or '-')}")
    if getattr(lib, "compiled_with_cuda", False):
        return Check("bitsandbytes library", "ok", f"{cextension.BNB_BACKEND}: {os.path.basename(path or '-')}")
    return Check("bitsandbytes library", "FAIL", f"no CUDA library loaded ({type(lib).__name__}); 4-bit training "
                                                 "cannot run: reinstall bitsandbytes for this CUDA")


def triton_check(on_gpu: bool) -> Check:
    v = _version("triton")
    cc = shutil.which("cc") or shutil.which("gcc")
    header = os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
    missing = [x for x, ok in (("triton", v), ("a C compiler", cc), ("Python.h", header)) if not ok]
    if not on_gpu:
        return Check("triton kernels", "not run", f"{NO_GPU}; triton {v or 'missing'}, C compiler {cc or 'missing'}")
    if missing:
        return Check("triton kernels", "FAIL", f"missing {', '.join(missing)}: Triton builds its kernels with them")
    return Check("triton kernels", "ok", f"triton {v}, C compiler {cc}, Python.h present")


def memory_check(props) -> Check:
    """Free memory against the profile the card's size selects (``--profile auto``)."""
    if props is None:
        return Check("memory vs profile", "not run", f"{NO_GPU}; `--profile auto` plans for the card found")
    import torch

    from kitrec_fast.profiles import profile_for_memory

    free, total = torch.cuda.mem_get_info(0)
    chosen, fits = profile_for_memory(total), profile_for_memory(free)
    detail = f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free; profile {chosen}"
    if fits != chosen:
        return Check("memory vs profile", "warn", f"{detail} needs the card to itself (another process holds "
                                                  f"memory); what is free fits profile {fits}")
    return Check("memory vs profile", "ok", detail)


# --------------------------------------------------------------------------------------------------
# probes: one backend per process


def probe(backend: str, train: bool) -> dict:
    """In a child process: import the backend first; with ``train``, 3 steps of the tiny Qwen3."""
    t0 = time.perf_counter()
    from kitrec_fast.backends import get_backend

    module = get_backend(backend)  # unsloth is imported here, before transformers/trl (fast path)
    out: dict = {"backend": backend, "import_s": time.perf_counter() - t0,
                 "unsloth_imported": "unsloth" in sys.modules}
    import torch

    if backend == "unsloth" and torch.cuda.is_available():
        out["attention"] = module.attention_backend()
    if not train:
        return out
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback

    from kitrec_fast.backends import runtime_facts
    from kitrec_fast.config import apply_overrides, config_from_dict
    from kitrec_fast.recipes import load_recipe, smoke_overrides
    from kitrec_fast.render.tokenizer import load_tokenizer
    from kitrec_fast.train.trainer import make_trainer

    raw = load_recipe("dualft_music_seta")
    # the smoke model; no random noise (NEFTune, dropout), so both backends' first steps see the same sums
    over = {**smoke_overrides(raw), "backend": backend, "train.max_steps": TRAIN_STEPS, "lora.dropout": 0,
            "train.neftune_alpha": "null", "data.max_length": 256, "train.per_device_batch_size": 2,
            "train.eval_steps": 10**6, "train.save_steps": 10**6, "train.warmup_ratio": 0}
    cfg = config_from_dict(apply_overrides(raw, {k: str(v) for k, v in over.items()}))
    loaded = module.load_model(cfg)
    tok = load_tokenizer(cfg.data.tokenizer)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 150000, (2 * TRAIN_STEPS, 128), generator=g)
    labels = ids.clone()
    labels[:, :96] = -100  # a masked prompt, then the trained answer
    from datasets import Dataset

    ds = Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist(), "length": [128] * len(ids)})
    losses: list[float] = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    with tempfile.TemporaryDirectory(prefix="kitrec-doctor-") as tmp:
        trainer = make_trainer(cfg, loaded.model, tok, ds, None, tmp, [Losses()])
        trainer._get_train_sampler = lambda *a, **k: SequentialSampler(ds)  # the same order on both backends
        t1 = time.perf_counter()
        trainer.train()
        out["train_s"] = time.perf_counter() - t1
    facts = runtime_facts(loaded.model, trainer)
    out.update({"losses": losses, "layers": loaded.notes.get("num_layers"), "attn_implementation": facts.get(
        "attn_implementation"), "fused_lora_kernels": facts.get("fused_lora_kernels"),
        "activation_dtype": facts.get("activation_dtype")})
    return out


def run_probe(backend: str, train: bool, timeout_s: float = PROBE_TIMEOUT_S) -> dict:
    cmd = [sys.executable, "-m", "kitrec_fast.doctor", "--probe", backend] + (["--train"] if train else [])
    return _run_child(cmd, {**os.environ, "UNSLOTH_DISABLE_STATISTICS": "1"}, timeout_s)


def _run_child(cmd: list[str], env: dict, timeout_s: float) -> dict:
    """A child that prints one JSON line last: that object plus ``wall_s``, or ``{"error": ...}``."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {timeout_s:g} s (--timeout-s)"}
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exited {proc.returncode}: {tail}"[:300], "wall_s": wall}
    return {**json.loads(lines[-1]), "wall_s": wall}


def probe_checks(results: dict[str, dict], on_gpu: bool, train: bool) -> list[Check]:
    u, p = results.get("unsloth", {}), results.get("peft", {})
    out = []
    if u.get("error"):
        out.append(Check("unsloth importable", "FAIL", u["error"]))
    else:
        out.append(Check("unsloth importable", "ok", f"imported in {u['import_s']:.1f} s (own process)"))
    attn = []
    if u.get("attention") or u.get("attn_implementation"):
        attn.append(f"fast path {u.get('attention') or u.get('attn_implementation')}")
    elif not on_gpu:
        attn.append("fast path: not run (Unsloth picks flash/xformers/sdpa on a GPU)")
    if train and p.get("attn_implementation"):
        attn.append(f"baseline {p['attn_implementation']}")
    elif not train:
        from kitrec_fast.config import config_from_dict
        from kitrec_fast.recipes import load_recipe

        attn.append(f"baseline {config_from_dict(load_recipe('dualft_music_seta')).model.attn_implementation} "
                    "(the recipe's)")
    out.append(Check("attention", "ok" if on_gpu or train else "not run", "; ".join(attn)))
    if not train:
        return out
    for name, r in (("fast path", u), ("baseline", p)):
        if r.get("error"):
            out.append(Check(f"tiny training: {name}", "FAIL", r["error"]))
            continue
        losses = r.get("losses") or []
        good = len(losses) == TRAIN_STEPS and all(x == x and abs(x) != float("inf") for x in losses)
        out.append(Check(f"tiny training: {name}", "ok" if good else "FAIL",
                         f"{TRAIN_STEPS} steps in {r.get('train_s', 0):.1f} s, losses "
                         f"{', '.join(f'{x:.4f}' for x in losses)}; {r.get('activation_dtype')} activations"
                         + ("; unsloth imported in this process!" if name == "baseline" and r.get("unsloth_imported")
                            else "")))
        if name == "baseline" and r.get("unsloth_imported"):
            out[-1].status = "FAIL"
    lu, lp = u.get("losses") or [], p.get("losses") or []
    if lu and lp:
        gap = abs(lu[0] - lp[0]) / abs(lp[0])
        last = abs(lu[-1] - lp[-1]) / abs(lp[-1])
        limit = LOSS_GAP_MAX["cuda" if on_gpu else "cpu"]
        out.append(Check("loss gap", "ok" if gap <= limit else "FAIL",
                         f"first step {gap:.2e} relative (at most {limit:g}: the same rows, LoRA B = 0); "
                         f"step {len(lu)}: {last:.2e}",
                         {"first_step": gap, "last_step": last, "losses": {"unsloth": lu, "peft": lp}}))
    else:
        out.append(Check("loss gap", "FAIL", "needs both tiny trainings"))
    return out


def run_fused_probe(on_gpu: bool, timeout_s: float = PROBE_TIMEOUT_S) -> dict:
    """``backends.fused_check`` in its own process: on CPU under Unsloth's CPU test switch and Triton's
    interpreter (both must be set before unsloth and triton are imported), on a GPU as a run imports it."""
    from kitrec_fast.backends.fused_check import INTERPRETER_ENV

    env = {**os.environ, "UNSLOTH_DISABLE_STATISTICS": "1"}
    for k in INTERPRETER_ENV:
        env.pop(k, None)
    if not on_gpu:
        env.update(INTERPRETER_ENV)
    return _run_child([sys.executable, "-m", "kitrec_fast.backends.fused_check"], env, timeout_s)


def fused_check_row(r: dict, on_gpu: bool, unsloth_probe: dict | None = None) -> Check:
    """``fused_kernels``: the largest error per fused function against PEFT on one layer; on a GPU also
    the kernels Unsloth's own patching installed (the tiny model of the fused check and, when it ran,
    of the fast path's tiny training)."""
    if r.get("error"):
        return Check("fused_kernels", "FAIL", f"the fused-function check did not run: {r['error']}",
                     {"error": r["error"]})
    layer = r["layer"]
    tol = layer["tolerance"]
    limit = f"{tol['value']:g}" + (" x the largest value" if tol["kind"] == "rel" else "")
    where = "Triton interpreter, CPU" if r.get("interpreter") else "Triton kernels, GPU"
    worst = {name: f["worst"] for name, f in layer["functions"].items()}
    failed = [name for name, f in layer["functions"].items() if not f["ok"]]
    parts = [", ".join(f"{n} {w:.1e}" for n, w in worst.items()) + f" ({layer['dtype']}, {where}; at most {limit})"]
    data = {"device": r["device"], "dtype": layer["dtype"], "interpreter": r.get("interpreter"),
            "tolerance": tol, "worst": worst, "functions": layer["functions"], "wall_s": r.get("wall_s")}
    status = "FAIL" if failed else "ok"
    if on_gpu:
        patched = r.get("patched") or {}
        kernels = patched.get("kernels") or {}
        data["patched"] = {"kernels": kernels, "functions": patched.get("functions")}
        parts.append(f"patch_peft_model installed {kernels.get('total')} of 3 on a 1-layer model, "
                     + ", ".join(f"{n} {f['worst']:.1e}" for n, f in (patched.get("functions") or {}).items()))
        if patched.get("error"):
            parts.append(f"patch_peft_model: {patched['error']}")
        if not patched.get("ok"):
            status = "FAIL"
            failed.append("patched model")
        u = unsloth_probe or {}
        if u and not u.get("error") and u.get("layers"):
            n, want = u.get("fused_lora_kernels"), 3 * int(u["layers"])
            data["training_kernels"] = {"installed": n, "expected": want}
            parts.append(f"tiny training: {n} of {want} (QKV, O, MLP per layer)")
            if n != want and status == "ok":
                status = "warn"
    if failed:
        parts.insert(0, "differs from PEFT: " + ", ".join(failed))
    return Check("fused_kernels", status, "; ".join(parts), data)


def run_checks(quick: bool, timeout_s: float = PROBE_TIMEOUT_S, only: str | None = None) -> list[Check]:
    if only == "fused_kernels":
        _, props = cuda_check()
        return [fused_check_row(run_fused_probe(props is not None, timeout_s), props is not None)]
    checks = version_checks()
    cuda, props = cuda_check()
    on_gpu = props is not None
    checks += [cuda, bitsandbytes_check(on_gpu), triton_check(on_gpu)]
    train = not quick
    backends = ("unsloth", "peft") if train else ("unsloth",)
    with ThreadPoolExecutor(len(backends) + 1) as pool:
        fused = pool.submit(run_fused_probe, on_gpu, timeout_s) if train else None
        results = dict(zip(backends, pool.map(lambda b: run_probe(b, train, timeout_s), backends)))
        checks += probe_checks(results, on_gpu, train)
        if fused is None:
            checks.append(Check("fused_kernels", "not run", "skipped by --quick (`kitrec-fast doctor --only "
                                                            "fused_kernels` runs it alone)"))
        else:
            checks.append(fused_check_row(fused.result(), on_gpu, results.get("unsloth")))
    checks.append(memory_check(props))
    return checks


def render(checks: list[Check], quick: bool, wall_s: float) -> None:
    from rich.table import Table

    from kitrec_fast.console import make_console

    style = {"ok": "green", "warn": "yellow", "FAIL": "bold red", "not run": "dim"}
    table = Table(title=f"kitrec-fast doctor{' --quick' if quick else ''} ({wall_s:.0f} s)")
    for col in ("check", "status", "detail"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(c.name, f"[{style[c.status]}]{c.status}[/]", c.detail)
    console = make_console()
    console.print(table)
    skipped = [c.name for c in checks if c.status == "not run"]
    if skipped:
        console.print(f"not run here: {', '.join(skipped)} (the reason in each row)")


def main(argv: list[str] | None = None) -> int:
    from kitrec_fast.clihelp import parser

    ap = parser("kitrec-fast doctor", DOCTOR_HELP, *DOCTOR_EXAMPLES)
    add_arguments(ap)
    ap.add_argument("--probe", choices=("unsloth", "peft"), help=argparse.SUPPRESS)
    ap.add_argument("--train", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:  # the child process of one backend
        print(json.dumps(probe(args.probe, args.train)))
        return 0
    return doctor(args)


DOCTOR_HELP = "Check this machine: versions, GPU, libraries, a tiny training per backend."
DOCTOR_EXAMPLES = ("kitrec-fast doctor", "kitrec-fast doctor --quick --json")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="no training: versions, CUDA, libraries, imports (seconds)")
    p.add_argument("--json", action="store_true", help="print the checks as JSON instead of the table")
    p.add_argument("--timeout-s", type=float, default=PROBE_TIMEOUT_S,
                   help="limit for each backend's process (they run side by side)")
    p.add_argument("--only", choices=ONLY, help="run this one check alone (exit status 1 when it fails): "
                   "fused_kernels = Unsloth's fused LoRA functions against PEFT on one small layer")


def doctor(args) -> int:
    t0 = time.perf_counter()
    if args.timeout_s <= 0:
        from kitrec_fast.errors import UserError

        raise UserError(f"--timeout-s: must be positive, got {args.timeout_s:g}")
    checks = run_checks(args.quick, args.timeout_s, args.only)
    if args.json:
        print(json.dumps({"quick": args.quick, "only": args.only, "wall_s": time.perf_counter() - t0,
                          "checks": [asdict(c) for c in checks]}, indent=1))
    else:
        render(checks, args.quick, time.perf_counter() - t0)
    return 1 if any(c.status == "FAIL" for c in checks) else 0


def add_parser(sub) -> None:
    from kitrec_fast.clihelp import command

    p = command(sub, "doctor", DOCTOR_HELP, *DOCTOR_EXAMPLES,
                description=f"{DOCTOR_HELP} Every backend runs in its own process; doctor stays under 90 s.")
    add_arguments(p)
    p.set_defaults(func=doctor)


if __name__ == "__main__":
    raise SystemExit(main())

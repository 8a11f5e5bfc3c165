"""Peak memory of one forward + backward of the LM-head loss alone: full logits vs chunked.

One measurement per fresh process, so nothing allocated by an earlier run (or by the allocator's
caches) hides in the number.

    # one measurement, prints one JSON row
    python benchmarks/training/loss_memory.py --impl chunked --tokens 10240 --hidden 5120 --vocab 151936 \\
        --dtype fp32 --device cpu --chunk-size 1024
    # driver: both impls in subprocesses, writes loss_memory.jsonl + loss_memory.md to --out
    python benchmarks/training/loss_memory.py --all --dtype fp32 --device cpu

"Added memory" is what the loss costs on top of its inputs (hidden states with requires_grad, the
frozen LM-head weight, the labels), including the hidden-state gradient it produces:
  CPU:  peak RSS (getrusage ru_maxrss) minus the RSS once the inputs exist;
  CUDA: torch.cuda.max_memory_allocated() minus memory_allocated() once the inputs exist.

Full-logits reference runs that would not fit the machine are measured at reduced token counts and
extrapolated linearly in the token count (the logits-sized tensors are exactly linear in it); such
rows carry ``"extrapolated": true`` and the sizes they were fitted on.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GB = 1e9
DTYPES = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}


def _rss_bytes() -> int:
    # Current (not peak) resident set: the baseline that peak RSS is measured against.
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    # Linux reports ru_maxrss in KiB (macOS in bytes; this benchmark targets Linux).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _total_mem_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
    except (ValueError, OSError):
        return None


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _run_loss(impl: str, hidden, weight, labels, eps: float, chunk_size: int):
    from kitrec_fast.train.loss import causal_lm_loss, reference_loss

    if impl == "chunked":
        return causal_lm_loss(hidden, weight, labels, label_smoothing=eps, chunk_size=chunk_size)
    return reference_loss(hidden, weight, labels, label_smoothing=eps)


def measure(args: argparse.Namespace) -> dict:
    """One forward + backward in this process; returns the JSON row."""
    import torch

    dtype = getattr(torch, DTYPES[args.dtype])
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.tokens % args.batch:
        raise SystemExit("--tokens must be a multiple of --batch")
    seq = args.tokens // args.batch
    torch.manual_seed(args.seed)

    # Library start-up (BLAS/oneDNN buffers, CUDA context, kernels) is not the loss's memory.
    w_ = torch.randn(64, 16, dtype=dtype, device=device)
    h_ = torch.randn(1, 8, 16, dtype=dtype, device=device, requires_grad=True)
    _run_loss(args.impl, h_, w_, torch.randint(0, 64, (1, 8), device=device), 0.1, 4).loss.backward()
    del w_, h_

    # Filled in place in the target dtype so that building the inputs never peaks above them.
    weight = torch.empty(args.vocab, args.hidden, dtype=dtype, device=device).normal_(std=0.02)
    hidden = torch.empty(args.batch, seq, args.hidden, dtype=dtype, device=device).normal_()
    hidden.requires_grad_()
    labels = torch.randint(0, args.vocab, (args.batch, seq), device=device)
    prompt = int(round(seq * args.ignore_frac))
    labels[:, :prompt] = -100  # a masked prompt prefix per row, as the SFT collator produces
    trained = int((labels[:, 1:] != -100).sum())

    gc.collect()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    base_rss = _rss_bytes()
    maxrss_before = _maxrss_bytes()

    t0 = time.perf_counter()
    out = _run_loss(args.impl, hidden, weight, labels, args.label_smoothing, args.chunk_size)
    if cuda:
        torch.cuda.synchronize(device)
    t_fwd = time.perf_counter() - t0
    out.loss.backward()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0

    row: dict = {
        "impl": args.impl,
        "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if cuda else _cpu_model(),
        "dtype": args.dtype,
        "batch": args.batch,
        "seq_len": seq,
        "tokens": args.tokens,
        "trained_tokens": trained,
        "hidden": args.hidden,
        "vocab": args.vocab,
        "chunk_size": args.chunk_size if args.impl == "chunked" else None,
        "label_smoothing": args.label_smoothing,
        "loss": float(out.loss.detach()),
        "nll": float(out.nll),
        "seconds": round(seconds, 3),
        "forward_seconds": round(t_fwd, 3),
    }
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        row.update(added_bytes=peak - base, baseline_bytes=base, peak_bytes=peak,
                   metric="cuda max_memory_allocated - baseline")
    else:
        peak = _maxrss_bytes()
        row.update(added_bytes=peak - base_rss, baseline_bytes=base_rss, peak_bytes=peak,
                   # If setup had peaked above the baseline, a small loss peak would be hidden.
                   setup_peak_above_baseline_bytes=max(0, maxrss_before - base_rss),
                   metric="ru_maxrss - rss after inputs")
    row["added_gb"] = round(row["added_bytes"] / GB, 3)
    row["env"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "cpu": _cpu_model(),
        "mem_total_gb": round(_total_mem_gb() or 0, 1),
        "git": _git_commit(),
        "utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return row


def _child(args: argparse.Namespace, impl: str, tokens: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--impl", impl, "--tokens", str(tokens),
           "--batch", str(args.batch), "--hidden", str(args.hidden), "--vocab", str(args.vocab),
           "--dtype", args.dtype, "--device", args.device, "--chunk-size", str(args.chunk_size),
           "--label-smoothing", str(args.label_smoothing), "--ignore-frac", str(args.ignore_frac),
           "--seed", str(args.seed)]
    print("+", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"child failed ({res.returncode}):\n{res.stderr[-4000:]}")
    row = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"  -> {row['impl']} {row['tokens']} tok: +{row['added_gb']:.3f} GB, {row['seconds']:.1f} s",
          file=sys.stderr, flush=True)
    return row


def _reference_estimate_gb(args: argparse.Namespace, tokens: int) -> float:
    # Full-logits path keeps ~4 fp32 logits-sized tensors alive at its peak (logits, log-softmax,
    # and two gradients in backward); used only to decide whether it is safe to run.
    return 4 * tokens * args.vocab * 4 / GB


def _extrapolate(rows: list[dict], tokens: int) -> dict:
    (a, b) = sorted(rows, key=lambda r: r["tokens"])[-2:]
    slope = (b["added_bytes"] - a["added_bytes"]) / (b["tokens"] - a["tokens"])
    t_slope = (b["seconds"] - a["seconds"]) / (b["tokens"] - a["tokens"])
    row = {k: v for k, v in b.items() if k not in ("loss", "nll", "baseline_bytes", "peak_bytes",
                                                    "setup_peak_above_baseline_bytes", "forward_seconds")}
    row.update(tokens=tokens, seq_len=tokens // b["batch"],
               trained_tokens=round(b["trained_tokens"] * tokens / b["tokens"]),
               added_bytes=round(b["added_bytes"] + slope * (tokens - b["tokens"])),
               seconds=round(b["seconds"] + t_slope * (tokens - b["tokens"]), 1),
               extrapolated=True, extrapolated_from_tokens=[a["tokens"], b["tokens"]])
    row["added_gb"] = round(row["added_bytes"] / GB, 3)
    return row


def _device_dir(args: argparse.Namespace) -> str:
    if args.device == "cpu":
        return "cpu"
    import torch

    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(args.device).lower()).strip("-")


def _markdown(rows: list[dict]) -> str:
    env = rows[-1]["env"]
    lines = [
        "# LM-head loss memory: full logits (reference) vs chunked",
        "",
        "One forward + backward of the label-smoothed loss alone, each row in a fresh process "
        "(`benchmarks/training/loss_memory.py`). *Added* = peak minus the memory held once the inputs "
        "(hidden states with requires_grad, frozen LM-head weight, labels) exist; it includes the "
        "hidden-state gradient. CPU: peak RSS (ru_maxrss); CUDA: max_memory_allocated. "
        "GB = 10^9 bytes. Rows marked *extrapolated* were not run: they are a linear fit in the "
        "token count through the two measured rows named next to them.",
        "",
        f"Machine: {env['cpu']}, {env['threads']} torch threads, {env['mem_total_gb']} GB RAM; "
        f"torch {env['torch']}, Python {env['python']}; {env['platform']}; git {env['git']}.",
        "",
        "| impl | device | dtype | tokens (B x T) | trained | H | V | chunk | added memory | time (s) | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        note = (f"extrapolated from {r['extrapolated_from_tokens'][0]} and "
                f"{r['extrapolated_from_tokens'][1]} tokens") if r.get("extrapolated") else "measured"
        lines.append(
            f"| {r['impl']} | {r['device']} | {r['dtype']} | {r['tokens']} ({r['batch']} x {r['seq_len']}) "
            f"| {r['trained_tokens']} | {r['hidden']} | {r['vocab']} | {r['chunk_size'] or '-'} "
            f"| {r['added_bytes'] / GB:.2f} GB | {r['seconds']:.1f} | {note} |")
    return "\n".join(lines) + "\n"


def drive(args: argparse.Namespace) -> None:
    out = Path(args.out or REPO / "benchmarks" / "results" / _device_dir(args))
    out.mkdir(parents=True, exist_ok=True)
    # Chunked first: at full size it is the number that matters and it always fits.
    rows: list[dict] = [_child(args, "chunked", args.tokens)]
    if args.device == "cpu" and _reference_estimate_gb(args, args.tokens) > args.max_reference_gb:
        small = sorted(args.reduced_tokens)
        ref_rows = [_child(args, "reference", t) for t in small]
        rows += ref_rows
        if args.reduced_chunked:
            rows += [_child(args, "chunked", t) for t in small]
        rows.append(_extrapolate(ref_rows, args.tokens))
    else:
        rows.append(_child(args, "reference", args.tokens))

    jsonl = out / "loss_memory.jsonl"
    mode = "a" if args.append else "w"
    with open(jsonl, mode) as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    all_rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    (out / "loss_memory.md").write_text(_markdown(all_rows))
    print(_markdown(all_rows))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--impl", choices=["reference", "chunked"], default="chunked")
    p.add_argument("--all", action="store_true", help="run both impls in fresh subprocesses, write results")
    p.add_argument("--tokens", type=int, default=10240, help="total tokens, B x T")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--hidden", type=int, default=5120)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--ignore-frac", type=float, default=0.15, help="masked prompt prefix per row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="results dir (default benchmarks/results/<device-name>/)")
    p.add_argument("--append", action="store_true", help="append to the JSONL instead of replacing it")
    p.add_argument("--max-reference-gb", type=float, default=12.0,
                   help="CPU: above this estimate the reference runs at --reduced-tokens and is extrapolated")
    p.add_argument("--reduced-tokens", type=int, nargs=2, default=[1024, 2048])
    p.add_argument("--reduced-chunked", action="store_true",
                   help="also run the chunked loss at --reduced-tokens, for a same-size comparison")
    args = p.parse_args(argv)
    if args.all:
        drive(args)
    else:
        print(json.dumps(measure(args), sort_keys=True), flush=True)


if __name__ == "__main__":
    main()

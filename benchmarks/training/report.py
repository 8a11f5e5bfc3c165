"""Benchmark report: results.jsonl -> results.md + tokens_per_s.png + peak_memory.png.

    python benchmarks/training/report.py benchmarks/results/<gpu>/headline            # (re)write the report
    python benchmarks/training/report.py benchmarks/results/<gpu>/headline --publish  # and the published tables

``--publish`` regenerates the headline table of docs/benchmarks.md and the landing table of README.md
between their markers, from a committed result file that both name, so the numbers there can always be
traced back to the rows they came from (and are never typed by hand). ``parse_table`` reads a generated
Markdown table back (the test suite checks the report round-trips).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable

GIB = 2**30
CAPS_GIB = (16, 24, 48)
REPO = Path(__file__).resolve().parents[2]
HEADLINE_MARKERS = ("<!-- bench:headline:start -->", "<!-- bench:headline:end -->")  # docs/benchmarks.md
LANDING_MARKERS = ("<!-- bench:landing:start -->", "<!-- bench:landing:end -->")  # README.md
NOT_MEASURED = "not yet measured on a GPU"
TARGET_SPEEDUP, TARGET_MFU, TARGET_FIT_GIB = 2.0, 0.40, 24

THROUGHPUT_COLUMNS = [
    "config", "backend", "model", "layers", "data", "seq_len", "batch", "timed_steps", "step_median_s",
    "step_min_max_s", "spread_pct", "tok_s_all", "tok_s_nonpad", "tok_s_trained", "samples_s", "mfu_pct",
    "load_alloc_gib", "load_reserved_gib", "first_step_alloc_gib", "first_step_reserved_gib", "steady_alloc_gib",
    "steady_reserved_gib", "train_alloc_gib", "train_reserved_gib",
    "attn", "grad_ckpt", "padding", "optimizer", "loss", "smoothing",
]


def load_rows(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if p.is_dir():
        p = p / "results.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def fmt(x: Any, digits: int = 3) -> str:
    """Numbers with ``digits`` significant figures (thousands separated): compact, parseable."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int) or x == 0:
        return f"{x:,}"
    mag = math.floor(math.log10(abs(x)))
    if mag >= digits - 1:
        return f"{round(x):,}"
    text = f"{x:.{max(0, digits - 1 - mag)}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def parse_number(text: str) -> float | None:
    t = text.strip().replace(",", "")
    if t in ("", "-"):
        return None
    try:
        return float(t)
    except ValueError:
        return None


def _seq_len(row: dict) -> int | None:
    d = row.get("spec", {}).get("data", {})
    return d.get("seq_len") or d.get("max_length")


def _mem(row: dict, when: str, kind: str) -> float | None:
    m = (row.get("memory") or {}).get(when) or {}
    if f"peak_{kind}_gib" in m:
        return m[f"peak_{kind}_gib"]
    return m.get("peak_rss_gib") if kind == "reserved" else None


def _is_cpu(rows: list[dict]) -> bool:
    return any((r.get("memory") or {}).get("device") == "cpu" for r in rows) or any(
        str((r.get("env") or {}).get("device_name", "")).startswith("CPU") for r in rows)


def throughput_record(r: dict) -> dict[str, str]:
    """One table row (strings), in THROUGHPUT_COLUMNS order."""
    s, st, tp = r.get("settings", {}), r.get("steps", {}), r.get("throughput", {})
    m = r.get("model", {})
    data = r.get("spec", {}).get("data", {})
    mfu = (r.get("mfu") or {}).get("mfu")
    return {
        "config": r["name"], "backend": r["backend"], "model": m.get("kind", "-"),
        "layers": f"{m.get('layers')}/{m.get('full_layers')}" if m else "-",
        "data": data.get("mode", "-"), "seq_len": fmt(_seq_len(r)), "batch": fmt(s.get("batch_size")),
        "timed_steps": fmt(st.get("n")) + (" (auto)" if (st.get("timed_choice") or {}).get("auto") else ""),
        "step_median_s": fmt(st.get("median_s")),
        "step_min_max_s": f"{fmt(st.get('min_s'))}-{fmt(st.get('max_s'))}" if st.get("n") else "-",
        "spread_pct": fmt(100 * st["spread_rel"]) if st.get("spread_rel") is not None else "-",
        "tok_s_all": fmt(tp.get("tokens_per_s_all")), "tok_s_nonpad": fmt(tp.get("tokens_per_s_nonpad")),
        "tok_s_trained": fmt(tp.get("tokens_per_s_trained")), "samples_s": fmt(tp.get("samples_per_s")),
        "mfu_pct": fmt(100 * mfu) if mfu is not None else "-",
        "load_alloc_gib": fmt(_mem(r, "after_load", "allocated")),
        "load_reserved_gib": fmt(_mem(r, "after_load", "reserved")),
        # the first step (the fast path's compile) and the steps after it, apart (worker.py)
        "first_step_alloc_gib": fmt(_mem(r, "first_step", "allocated")),
        "first_step_reserved_gib": fmt(_mem(r, "first_step", "reserved")),
        "steady_alloc_gib": fmt(_mem(r, "steady", "allocated")),
        "steady_reserved_gib": fmt(_mem(r, "steady", "reserved")),
        "train_alloc_gib": fmt(_mem(r, "training", "allocated")),
        "train_reserved_gib": fmt(_mem(r, "training", "reserved")),
        "attn": str(s.get("attn_implementation", "-")), "grad_ckpt": str(s.get("gradient_checkpointing", "-")),
        "padding": "padding-free" if s.get("padding_free") else "padded", "optimizer": str(s.get("optimizer", "-")),
        "loss": str(s.get("loss", "-")), "smoothing": fmt(s.get("label_smoothing")),
    }


def md_table(columns: list[str], records: Iterable[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for rec in records:
        lines.append("| " + " | ".join(str(rec.get(c, "-")).replace("|", "/") for c in columns) + " |")
    return "\n".join(lines)


def parse_table(markdown: str, heading: str) -> list[dict[str, str]]:
    """The first Markdown table after the line ``heading`` (e.g. '## Throughput'), as dicts."""
    lines = markdown.splitlines()
    try:
        i = next(k for k, line in enumerate(lines) if line.strip() == heading)
    except StopIteration:
        raise ValueError(f"no heading {heading!r}") from None
    while i < len(lines) and not lines[i].startswith("|"):
        i += 1
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    header = cells(lines[i])
    out = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        out.append(dict(zip(header, cells(line))))
    return out


def pairs(rows: list[dict]) -> list[tuple[dict, dict]]:
    """(unsloth, peft) rows of the same group, length and model depth, both ok."""
    by_key: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if r.get("kind") != "throughput" or r.get("status") != "ok":
            continue
        key = (r["spec"].get("group"), _seq_len(r), r["model"].get("layers"), r["spec"].get("batch_size"))
        by_key.setdefault(key, {})[r["backend"]] = r
    return [(v["unsloth"], v["peft"]) for v in by_key.values() if "unsloth" in v and "peft" in v]


def same_order(a: dict, b: dict) -> bool:
    return a.get("data", {}).get("batch_sha1") == b.get("data", {}).get("batch_sha1")


def speedups(rows: list[dict]) -> list[dict[str, str]]:
    out = []
    for u, p in pairs(rows):
        tu, tp = u["throughput"]["tokens_per_s_trained"], p["throughput"]["tokens_per_s_trained"]
        m = u["model"]
        out.append({"group": u["spec"].get("group"), "layers": f"{m.get('layers')}/{m.get('full_layers')}",
                    "seq_len": fmt(_seq_len(u)), "batch": fmt(u["settings"].get("batch_size")),
                    "unsloth_tok_s_trained": fmt(tu), "peft_tok_s_trained": fmt(tp),
                    "speedup": fmt(tu / tp if tp else None), "identical_batches": "yes" if same_order(u, p) else "NO"})
    return out


def _full14b(r: dict) -> bool:
    m = r.get("model") or {}
    return (m.get("kind") in ("arch-random", "checkpoint") and not m.get("reduced_depth")
            and m.get("hidden_size") == 5120 and m.get("layers") == 40)


def headline_pair(rows: list[dict]) -> tuple[dict, dict] | None:
    """The (unsloth, peft) rows of the headline: full-depth Qwen3-14B geometry, fixed 2 x 5,120 tokens."""
    head = [(u, p) for u, p in pairs(rows) if _full14b(u) and _seq_len(u) == 5120
            and u["settings"].get("batch_size") == 2 and u.get("spec", {}).get("data", {}).get("mode") == "fixed"]
    return head[0] if head else None


def targets(rows: list[dict]) -> list[dict[str, str]]:
    """The issue's targets, evaluated only on full-depth Qwen3-14B geometry (never on reduced/tiny runs)."""
    out = []
    head = headline_pair(rows)
    if head:
        u, p = head
        sp = u["throughput"]["tokens_per_s_trained"] / p["throughput"]["tokens_per_s_trained"]
        out.append({"target": f"fast path >= {TARGET_SPEEDUP:g}x baseline trained tok/s at 2 x 5,120",
                    "measured": f"{sp:.2f}x", "status": "met" if sp >= TARGET_SPEEDUP else "not met"})
        mfu = (u.get("mfu") or {}).get("mfu")
        out.append({"target": f"MFU >= {100 * TARGET_MFU:.0f}% (fast path, 2 x 5,120)",
                    "measured": f"{100 * mfu:.1f}%" if mfu is not None else "-",
                    "status": "-" if mfu is None else ("met" if mfu >= TARGET_MFU else "not met")})
        peak = _mem(u, "training", "reserved")
        smooth = u["settings"].get("label_smoothing", 0) > 0
        out.append({"target": f"training peak fits {TARGET_FIT_GIB} GB, label smoothing on (fast path)",
                    "measured": f"{peak:.1f} GiB reserved (smoothing {u['settings'].get('label_smoothing')})",
                    "status": ("met" if peak + 0.5 <= TARGET_FIT_GIB else "not met") if smooth else "smoothing off: n/a"})
    else:
        out.append({"target": "all three targets", "measured": "-",
                    "status": "no data: needs a full-depth (40-layer) Qwen3-14B run at 2 x 5,120 on a GPU"})
    return out


def ceiling_table(rows: list[dict]) -> tuple[list[str], list[dict[str, str]]]:
    crow = [r for r in rows if r.get("kind") == "ceiling" and r.get("ceiling")]
    caps = sorted({c for r in crow for c in (r.get("ceiling") or {}).get("by_cap", {})}, key=float)
    cols = ["backend", "layers", "batch"] + [f"{c} GB: longest L" for c in caps] + ["status"]
    recs = []
    for r in crow:
        c = r.get("ceiling") or {}
        rec = {"backend": r["backend"], "layers": f"{(r.get('model') or {}).get('layers')}/"
                                                  f"{(r.get('model') or {}).get('full_layers')}",
               "batch": fmt(c.get("batch_size")), "status": r["status"]}
        for cap in caps:
            b = c.get("by_cap", {}).get(cap, {})
            v = b.get("max_seq_len")
            txt = "none" if v is None and b else fmt(v)
            if b.get("grid_exhausted"):
                txt += " (grid max)"
            elif b and not b.get("complete", True):
                txt += " (probe cut short: at least)"
            rec[f"{cap} GB: longest L"] = txt
        recs.append(rec)
    return cols, recs


def _device(rows: list[dict]) -> str:
    for r in rows:
        d = (r.get("env") or {}).get("device_name")
        if d:
            return d
    return "unknown device"


def env_lines(rows: list[dict], run: dict) -> list[str]:
    env = next((r["env"] for r in rows if r.get("env") and "versions" in r["env"]), {})
    v = env.get("versions", {})
    cal = run.get("calibration") or {}
    commit = run.get("git_commit") or env.get("git_commit")
    return [
        f"- device: {_device(rows)}; driver {env.get('driver') or '-'}; CUDA {((env.get('gpu') or {}).get('cuda')) or '-'}",
        "- versions: " + ", ".join(f"{k} {v.get(k) or '-'}" for k in
                                   ("torch", "transformers", "trl", "peft", "bitsandbytes", "unsloth", "unsloth_zoo",
                                    "triton", "datasets", "accelerate")),
        f"- python {env.get('python', '-')}; git commit {commit or '-'}; source sha {run.get('source_sha', '-')}",
        f"- MFU reference: {fmt(cal.get('peak_tflops'))} TFLOP/s dense {cal.get('dtype', '-')} matmul, "
        f"measured on this device at the start of the run (best of sizes {[c['n'] for c in cal.get('by_size', [])]})",
        f"- run: preset {run.get('preset', '-')}, started {run.get('started', '-')}, "
        f"wall {fmt(run.get('wall_s'))} s, budget {fmt(run.get('budget_s'))} s",
    ]


def write_report(out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    rows = load_rows(out)
    run = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
    cpu = _is_cpu(rows)
    ok_tp = [r for r in rows if r.get("kind") == "throughput" and r.get("status") == "ok"]
    full = [r for r in ok_tp if not (r.get("model") or {}).get("reduced_depth")]
    reduced = [r for r in ok_tp if (r.get("model") or {}).get("reduced_depth")]
    md: list[str] = [f"# kitrec_fast training benchmark: {_device(rows)}", ""]
    if cpu:
        md += ["> **CPU run with the tiny random model (hidden 64, 2 layers).** It exercises the harness and the",
               "> report end to end. These numbers say nothing about GPU performance and are not a claim.", ""]
    models = {(r.get("model") or {}).get("kind") for r in ok_tp}
    if "arch-random" in models:
        md += ["> Model: Qwen3-14B **architecture with random weights** (exact configuration, built by",
               "> `benchmarks/gpu/build_arch_model.py`); both backends loaded the same files. Speed and memory depend",
               "> on the geometry, not the values; losses are meaningless.", ""]
    md += ["## Environment", "", *env_lines(rows, run), ""]
    md += ["## Targets", "", "Evaluated only on full-depth Qwen3-14B geometry; reported, not asserted.", "",
           md_table(["target", "measured", "status"], targets(rows)), ""]
    md += ["## Throughput", "",
           "Timed steps only (after the untimed warm-up); a step is one micro-batch and one optimizer step. "
           "Tokens/s over all positions (incl. padding), non-padding positions and trained (label != -100) "
           "positions; memory in GiB, peak after model load, peak of the first step (the fast path's compile), "
           "steady-state peak of the steps after it, and the training peak (the larger of the two), each window "
           "opened after `gc.collect()` + `torch.cuda.empty_cache()` on both backends (CPU: process peak RSS in the "
           "reserved columns). `timed_steps (auto)`: the count was chosen from the warm-up to fill the worker's "
           "time share. MFU: see benchmarks/training/flops.py.", "",
           md_table(THROUGHPUT_COLUMNS, [throughput_record(r) for r in full]), ""]
    if reduced:
        n = sorted({(r["model"]["layers"], r["model"]["full_layers"]) for r in reduced})
        md += [f"## Reduced depth: {', '.join(f'{a} of {b}' for a, b in n)} decoder layers (NOT the full model)", "",
               "These runs keep Qwen3-14B's width and vocabulary but only the first decoder layers, to sweep the "
               "sequence length within the time budget. Read them as per-layer figures and as a relative "
               "comparison of the backends; the tokens/s and memory below are **not** full-model numbers "
               "(embedding, LM head and loss weigh much more at this depth).", "",
               md_table(["config", "backend", "layers", "seq_len", "ms_per_step_per_layer", "train_minus_load_gib_per_layer",
                         "tok_s_trained_at_this_depth", "mfu_pct"],
                        [{"config": r["name"], "backend": r["backend"],
                          "layers": f"{r['model']['layers']}/{r['model']['full_layers']}", "seq_len": fmt(_seq_len(r)),
                          "ms_per_step_per_layer": fmt(r["per_layer"]["step_ms_per_layer"]),
                          "train_minus_load_gib_per_layer": fmt(
                              ((_mem(r, "training", "allocated") or 0) - (_mem(r, "after_load", "allocated") or 0))
                              / r["model"]["layers"]) if _mem(r, "training", "allocated") is not None else "-",
                          "tok_s_trained_at_this_depth": fmt(r["throughput"]["tokens_per_s_trained"]),
                          "mfu_pct": fmt(100 * r["mfu"]["mfu"]) if r["mfu"].get("mfu") is not None else "-"}
                         for r in reduced]), ""]
    sp = speedups(rows)
    if sp:
        md += ["## Fast path vs baseline", "", "Trained tokens/s, same batches in the same order on both backends "
               "(`identical_batches` compares the per-batch fingerprints).", "",
               md_table(list(sp[0].keys()), sp), ""]
    cols, crecs = ceiling_table(rows)
    if crecs:
        md += ["## Memory ceilings", "",
               "Longest fixed sequence length (from the probed grid) that trains at the batch size shown when the "
               "process's allocator is capped to emulate a smaller card (cap = card size - context reserve). "
               "'none': not even the shortest length fit.", "", md_table(cols, crecs), ""]
    cut = [r for r in rows if r.get("kind") == "throughput" and r.get("status") == "partial" and r.get("throughput")]
    if cut:
        md += ["## Partial rows (stopped at the time limit)", "",
               "A worker writes its row after every step; these were stopped before their last step. Their "
               "figures cover the timed steps that finished (see `steps.done`) and are no full measurement; "
               "targets and speed-ups above never use them.", "",
               md_table(THROUGHPUT_COLUMNS, [throughput_record(r) for r in cut]), ""]
    bad = [r for r in rows if r.get("status") != "ok"]
    if bad:
        md += ["## Not measured", "", md_table(["config", "status", "reason"],
                                               [{"config": r["name"], "status": r["status"],
                                                 "reason": (r.get("error") or "-")[:200]} for r in bad]), ""]
    md += ["## Plots", "", "![tokens/s](tokens_per_s.png)", "", "![peak memory](peak_memory.png)", ""]
    paths = {"markdown": out / "results.md"}
    try:
        plots = plot(rows, out, cpu)
    except ImportError as exc:  # e.g. no matplotlib on the GPU machine: rerun report.py elsewhere
        plots = {}
        md[-6:] = ["## Plots", "", f"Not drawn here ({exc}); run `python benchmarks/training/report.py` on a machine "
                   "with matplotlib.", ""]
    paths["markdown"].write_text("\n".join(md))
    paths.update(plots)
    return paths


def _fixed_series(rows: list[dict]) -> dict[str, list[tuple[int, dict]]]:
    series: dict[str, list[tuple[int, dict]]] = {}
    for r in rows:
        if r.get("kind") != "throughput" or r.get("status") != "ok" or r["spec"]["data"].get("mode") != "fixed":
            continue
        m = r["model"]
        label = f"{r['backend']} ({m['layers']} of {m['full_layers']} layers)" if m.get("reduced_depth") else r["backend"]
        series.setdefault(label, []).append((int(_seq_len(r)), r))
    return {k: sorted(v, key=lambda t: t[0]) for k, v in series.items()}


def _save(fig, ax, ylabel: str, title: str, legend: bool, path: Path) -> Path:
    """Label the length axis, title and legend a plot, write it and close it (both plots share this)."""
    import matplotlib.pyplot as plt

    ax.set_xlabel("sequence length (tokens, fixed-length rows)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(rows: list[dict], out: Path, cpu: bool) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"unsloth": "tab:green", "peft": "tab:blue"}
    series = _fixed_series(rows)
    note = " (CPU, tiny model: not a performance claim)" if cpu else ""
    paths = {}

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, pts in series.items():
        backend = label.split()[0]
        ax.plot([p[0] for p in pts], [p[1]["throughput"]["tokens_per_s_trained"] for p in pts], marker="o",
                color=colors.get(backend), linestyle="--" if "layers" in label else "-", label=label)
    paths["tokens_png"] = _save(fig, ax, "trained tokens / s", "Training throughput" + note, bool(series),
                                out / "tokens_per_s.png")

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ymax = 0.0
    for label, pts in series.items():
        backend = label.split()[0]
        ys = [_mem(p[1], "training", "reserved") for p in pts]
        ymax = max([ymax] + [y for y in ys if y is not None])
        ax.plot([p[0] for p in pts], ys, marker="o", color=colors.get(backend),
                linestyle="--" if "layers" in label else "-", label=f"{label}: training peak")
    # ceiling probes give the full model's peak at every length that fit
    for r in rows:
        if r.get("kind") != "ceiling" or not r.get("ceiling"):
            continue
        pts = sorted({a["seq_len"]: a["peak_reserved_gib"] for a in r["ceiling"]["attempts"]
                      if a.get("ok") and a.get("peak_reserved_gib") is not None}.items())
        if pts:
            ymax = max(ymax, max(p[1] for p in pts))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="x", linestyle=":",
                    color=colors.get(r["backend"]), label=f"{r['backend']}: ceiling probes")
    for cap in CAPS_GIB:
        ax.axhline(cap, color="grey", linewidth=0.8, linestyle="-.")
        ax.text(ax.get_xlim()[0] if series else 0, cap, f" {cap} GB card", fontsize=7, va="bottom", color="grey")
    if ymax and ymax < 2:
        ax.set_yscale("log")  # tiny CPU numbers next to the card lines
    paths["memory_png"] = _save(fig, ax, "peak memory, GiB" + (" (process RSS)" if cpu else " (reserved)"),
                                "Peak training memory vs 16/24/48 GB cards" + note, bool(series), out / "peak_memory.png")
    return paths


def _shown(result_dir: Path, root: Path) -> str:
    """``result_dir`` as the checkout's root sees it, so the printed command and the link work from there."""
    full = result_dir.resolve()
    return str(full.relative_to(root.resolve())) if full.is_relative_to(root.resolve()) else str(result_dir)


def headline_block(result_dir: str | Path, root: Path = REPO) -> list[str]:
    """docs/benchmarks.md's table: every full-depth throughput row of ``result_dir``, then the targets."""
    result_dir = Path(result_dir)
    rows, rel = load_rows(result_dir), _shown(result_dir, root)
    ok = [r for r in rows if r.get("kind") == "throughput" and r.get("status") == "ok"
          and not (r.get("model") or {}).get("reduced_depth")]
    cols = ["config", "backend", "layers", "seq_len", "batch", "timed_steps", "step_median_s", "spread_pct",
            "tok_s_trained", "mfu_pct", "first_step_reserved_gib", "steady_reserved_gib"]
    return [f"Generated by `python benchmarks/training/report.py {rel} --publish` from "
            f"[`{rel}/results.jsonl`](repo:{rel}/results.jsonl) ({_device(rows)}).", "",
            md_table(cols, [throughput_record(r) for r in ok]), "",
            md_table(["target", "measured", "status"], targets(rows))]


def landing_block(result_dir: str | Path, root: Path = REPO) -> list[str]:
    """README.md's small table: the headline pair's trained tokens/s, speed-up and steady peak memory."""
    result_dir = Path(result_dir)
    rows, rel = load_rows(result_dir), _shown(result_dir, root)
    pair = None if _is_cpu(rows) else headline_pair(rows)
    cells = {"tokens/s trained": [NOT_MEASURED] * 2, "speed-up": [NOT_MEASURED] * 2,
             "peak memory, steady steps (reserved)": [NOT_MEASURED] * 2}
    where = "one GPU"
    if pair:
        u, p = pair
        tu, tp = (r["throughput"]["tokens_per_s_trained"] for r in pair)
        cells["tokens/s trained"] = [fmt(tu), fmt(tp)]
        cells["speed-up"] = [f"{tu / tp:.2f}x", "1x"]
        cells["peak memory, steady steps (reserved)"] = [
            f"{m:.1f} GiB" if m is not None else "-" for m in (_mem(r, "steady", "reserved") for r in pair)]
        where = _device(rows)
    head = f"headline (Qwen3-14B geometry, 2 x 5,120 tokens, {where})"
    table = md_table([head, "Unsloth fast path", "transformers + bitsandbytes + PEFT"],
                     [{head: k, "Unsloth fast path": v[0], "transformers + bitsandbytes + PEFT": v[1]}
                      for k, v in cells.items()])
    source = (f"Generated by `python benchmarks/training/report.py {rel} --publish` from "
              f"[`{rel}/results.jsonl`]({rel}/results.jsonl)")
    return [table, "", source + "; the method, every column and the targets: [Benchmarks](docs/benchmarks.md)."]


def replace_block(path: str | Path, markers: tuple[str, str], lines: list[str]) -> None:
    """Rewrite what lies between ``markers`` in ``path`` (the markers stay)."""
    path = Path(path)
    start, end = markers
    text = path.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"error: {path}: no {start} ... {end} block")
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(head + "\n".join([start, *lines, end]) + tail)


def publish(result_dir: str | Path, root: Path = REPO) -> list[Path]:
    """The published tables regenerated from ``result_dir``: docs/benchmarks.md and README.md."""
    docs, readme = root / "docs" / "benchmarks.md", root / "README.md"
    replace_block(docs, HEADLINE_MARKERS, headline_block(result_dir, root))
    replace_block(readme, LANDING_MARKERS, landing_block(result_dir, root))
    return [docs, readme]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="results.jsonl -> results.md + PNG plots")
    ap.add_argument("result_dir")
    ap.add_argument("--publish", action="store_true",
                    help="also regenerate the headline table of docs/benchmarks.md and the landing table of "
                         "README.md from this folder (default: the report only)")
    args = ap.parse_args(argv)
    if not (Path(args.result_dir) / "results.jsonl").is_file() and not Path(args.result_dir).is_file():
        ap.error(f"result_dir {args.result_dir}: no results.jsonl there")
    paths = list(write_report(args.result_dir).values())
    if args.publish:
        paths += publish(args.result_dir)
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())

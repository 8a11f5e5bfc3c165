"""The grid report: one entry per job (JSON), a Markdown table and one PNG lining the models up."""

from __future__ import annotations

import json
import math
from pathlib import Path

from kitrec_fast.fsio import atomic_write_json, atomic_write_text
from kitrec_fast.grid.spec import GridSpec

REPORT_JSON = "grid_report.json"
REPORT_MD = "grid_report.md"
REPORT_PNG = "grid_report.png"
METRICS = ("hit@1", "hit@5", "hit@10", "mrr", "ndcg@5", "ndcg@10")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _peak_memory(run_dir: Path) -> tuple[float | None, str | None]:
    """The largest peak memory any metrics row recorded: GPU allocated MiB, or process RSS on CPU."""
    path = run_dir / "metrics.jsonl"
    best, kind = None, None
    if not path.is_file():
        return None, None
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        for key, label in (("peak_mem_allocated_mib", "gpu_allocated"), ("peak_rss_mib", "cpu_rss")):
            if isinstance(row.get(key), (int, float)) and (best is None or row[key] > best):
                best, kind = float(row[key]), label
    return best, kind


def job_entry(job_id: str, record: dict) -> dict:
    run_dir, eval_dir = Path(record["run_dir"]), Path(record["eval_dir"])
    summary = _read_json(run_dir / "summary.json") or {}
    score = _read_json(eval_dir / "score" / "report.json") or {}
    overall = score.get("overall") or {}
    peak, kind = _peak_memory(run_dir)
    return {
        "job": job_id, "recipe": record["recipe"], "set": record["set"], "backend": record["backend"],
        "state": record["state"], "error": record.get("error"), "run_dir": str(run_dir), "eval_dir": str(eval_dir),
        "eval_loss": summary.get("best_eval_loss"), "global_step": summary.get("global_step"),
        "train_wall_seconds": summary.get("wall_seconds"), "stage_seconds": record.get("stage_seconds", {}),
        "peak_memory_mib": peak, "peak_memory_kind": kind,
        "eval_rows": overall.get("n"), "metrics": {k: (overall.get("metrics") or {}).get(k) for k in METRICS},
        "by_user_type": {t: g.get("metrics") for t, g in (score.get("by_user_type") or {}).items()},
    }


def _num(v, digits=4) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def markdown(entries: list[dict], spec_settings: dict) -> str:
    head = ["job", "state", "eval loss", "Hit@1", "Hit@5", "Hit@10", "MRR", "NDCG@5", "NDCG@10", "eval rows",
            "train wall (s)", "peak mem (MiB)"]
    lines = ["# KitREC grid report", "",
             f"Settings: `{json.dumps(spec_settings)}`. Metrics: overall over the model's test user types "
             "(`eval score`, the paper's protocol); eval loss: best smoothed validation loss of training.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        m = e["metrics"]
        mem = "-" if e["peak_memory_mib"] is None else f"{e['peak_memory_mib']:.0f} ({e['peak_memory_kind']})"
        lines.append("| " + " | ".join([
            e["job"], e["state"], _num(e["eval_loss"]), *(_num(m[k]) for k in METRICS),
            str(e["eval_rows"] or "-"), _num(e["train_wall_seconds"], 1), mem]) + " |")
    failed = [e for e in entries if e["error"]]
    if failed:
        lines += ["", "## Failed jobs", ""] + [f"- {e['job']}: {e['error']}" for e in failed]
    return "\n".join(lines) + "\n"


def figure(entries: list[dict]):
    """The report figure: test metrics per job, and best eval loss per job. A panel whose values
    are all zero (or missing) says so in words: a blank chart reads as a broken report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [e["job"] for e in entries]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(10, 1.6 * len(names) + 6), 5),
                                   gridspec_kw={"width_ratios": [3, 1]})
    x = np.arange(len(names))
    shown = ("hit@1", "hit@5", "hit@10", "mrr", "ndcg@10")
    width = 0.8 / len(shown)
    everything = []
    for i, k in enumerate(shown):
        vals = [e["metrics"][k] if e["metrics"][k] is not None else 0.0 for e in entries]
        everything += vals
        ax1.bar(x + (i - (len(shown) - 1) / 2) * width, vals, width, label=k)
    ax1.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax1.set_ylim(0, 1)
    ax1.set_ylabel("score (overall)")
    ax1.set_title("test metrics")
    ax1.legend(fontsize=8)
    if not any(everything):
        scored = any(e["eval_rows"] for e in entries)
        ax1.text(0.5, 0.5, "every metric is 0 for every job" if scored else "no job has a score yet",
                 ha="center", va="center", transform=ax1.transAxes, fontsize=12)
    losses = [e["eval_loss"] if e["eval_loss"] is not None else 0.0 for e in entries]
    ax2.bar(x, losses, color="gray")
    ax2.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax2.set_title("best eval loss (smoothed)")
    if not any(losses):
        ax2.text(0.5, 0.5, "no eval loss recorded", ha="center", va="center", transform=ax2.transAxes)
    fig.tight_layout()
    return fig


def plot(entries: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = figure(entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(spec: GridSpec, state: dict) -> dict[str, Path]:
    out = Path(spec.output)
    wanted = [j.id for j in spec.jobs()]
    entries = [job_entry(job_id, state["jobs"][job_id]) for job_id in wanted]
    paths = {"json": out / REPORT_JSON, "md": out / REPORT_MD, "png": out / REPORT_PNG}
    atomic_write_json(paths["json"], {"settings": state.get("settings"), "jobs": entries})
    atomic_write_text(paths["md"], markdown(entries, state.get("settings") or {}))
    plot(entries, paths["png"])
    return paths

"""Loss curves of a run as a PNG."""

from __future__ import annotations

from pathlib import Path


def plot_loss_curves(rows: list[dict], out_png: Path, title: str = "") -> Path | None:
    """Train and eval loss against optimizer step; smoothed objective solid, plain CE dashed."""
    try:
        import matplotlib
    except ImportError:  # a bare GPU box may lack it; the numbers are in metrics.jsonl anyway
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {
        "train loss (smoothed)": [(r["step"], r["loss"]) for r in rows if "loss" in r],
        "train nll (plain CE)": [(r["step"], r["nll"]) for r in rows if "nll" in r and "loss" in r],
        "eval loss (smoothed)": [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r],
        "eval nll (plain CE)": [(r["step"], r["eval_nll"]) for r in rows if "eval_nll" in r],
    }
    if not any(series.values()):
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    styles = {"train loss (smoothed)": ("C0", "-", None), "train nll (plain CE)": ("C0", "--", None),
              "eval loss (smoothed)": ("C3", "-", "o"), "eval nll (plain CE)": ("C3", "--", "o")}
    for name, pts in series.items():
        if pts:
            color, ls, marker = styles[name]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ls, color=color, marker=marker, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per trained token")
    ax.set_title(title or "loss curves")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png

"""PNG bar charts of a score report: metrics and error rates, grouped by user type."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from kitrec_fast.eval.score import ScoreReport

__all__ = ["plot_metrics_by_user_type", "plot_error_rates"]

_ERROR_RATES = ("parse_failure_rate", "invalid_item_rate", "duplicate_rate", "unfinished_think_rate")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless servers and tests: never try to open a window
    import matplotlib.pyplot as plt

    return plt


def plot_metrics_by_user_type(report: "ScoreReport", path: str | Path) -> Path:
    """One group of bars per user type (overall first), one bar per metric, CI whiskers."""
    groups = report.groups()
    names = report.metric_names
    means = np.array([[g.metrics[m] for m in names] for g in groups.values()], dtype=float)
    lows = np.array([[g.ci[m][0] for m in names] for g in groups.values()], dtype=float)
    highs = np.array([[g.ci[m][1] for m in names] for g in groups.values()], dtype=float)
    # whiskers must be non-negative distances; a NaN interval (no rows) just draws none
    err = np.stack([np.nan_to_num(means - lows), np.nan_to_num(highs - means)]).clip(min=0)
    return _grouped_bars(
        path,
        list(groups),
        names,
        means,
        err,
        title=f"Ranking metrics by user type ({int(round(100 * (1 - report.alpha)))}% bootstrap CI)",
        ylim=(0.0, 1.05),
    )


def plot_error_rates(report: "ScoreReport", path: str | Path) -> Path:
    groups = report.groups()
    values = np.array(
        [[g.rates[r] if g.rates[r] is not None else np.nan for r in _ERROR_RATES] for g in groups.values()],
        dtype=float,
    )
    labels = [r.replace("_rate", "").replace("_", " ") for r in _ERROR_RATES]
    # error rates are usually a few percent: a fixed 0-1 axis would flatten them to nothing
    top = float(np.nanmax(values)) if np.isfinite(values).any() else 0.0
    ylim = (0.0, min(1.05, max(0.05, 1.15 * top)))
    return _grouped_bars(path, list(groups), labels, values, None, title="Error rates by user type", ylim=ylim)


def _grouped_bars(
    path: str | Path,
    groups: Sequence[str],
    series: Sequence[str],
    values: np.ndarray,
    err: np.ndarray | None,
    *,
    title: str,
    ylim: tuple[float, float],
) -> Path:
    plt = _pyplot()
    n_groups, n_series = len(groups), len(series)
    width = 0.8 / max(n_series, 1)
    x = np.arange(n_groups)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.4 * n_groups + 3), 5.0))
    try:
        for j, name in enumerate(series):
            yerr = None if err is None else err[:, :, j]
            ax.bar(x + (j - (n_series - 1) / 2) * width, np.nan_to_num(values[:, j]), width,
                   yerr=yerr, capsize=2, label=name)
        ax.set_xticks(x)
        ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(*ylim)
        ax.set_title(title)
        # outside the axes: bars near 1.0 (a good model's Hit@10) would sit under an inner legend
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=110)
    finally:
        plt.close(fig)
    return out

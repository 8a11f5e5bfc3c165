"""PNG bar charts of a score report: metrics and error rates, grouped by user type.

A value that does not exist (a rate over zero rows, a metric of an empty group) is written as
"n/a" where its bar would be, never drawn as a zero bar; a chart whose values are all zero says
so in words, so an empty-looking chart cannot be mistaken for a rendering failure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

__all__ = ["error_rates_chart", "metrics_chart", "plot_error_rates", "plot_metrics_by_user_type"]

_ERROR_RATES = ("paper_parse_error_rate", "parse_failure_rate", "invalid_item_rate", "duplicate_rate",
                "unfinished_think_rate", "token_limit_rate")
NA_LABEL = "n/a"
ALL_ZERO_NOTE = "every value in this chart is 0"


class Group(Protocol):
    """One bar group's numbers: a user type's (or all rows') metrics, intervals and error rates."""

    metrics: Mapping[str, float | None]
    ci: Mapping[str, tuple[float, float]]
    rates: Mapping[str, float | None]


class Report(Protocol):
    """What a chart reads: the groups (overall first) and how the metrics were computed. A score
    report has this shape; the charts take any such object, so they depend on no report builder."""

    metric_names: Sequence[str]
    protocol: str
    alpha: float

    def groups(self) -> Mapping[str, Group]: ...


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless servers and tests: never try to open a window
    import matplotlib.pyplot as plt

    return plt


def metrics_chart(report: Report) -> Any:
    """One group of bars per user type (overall first), one bar per metric, CI whiskers."""
    groups = report.groups()
    names = report.metric_names
    means = np.array([[_num(g.metrics[m]) for m in names] for g in groups.values()], dtype=float)
    lows = np.array([[_num(g.ci[m][0]) for m in names] for g in groups.values()], dtype=float)
    highs = np.array([[_num(g.ci[m][1]) for m in names] for g in groups.values()], dtype=float)
    # whiskers must be non-negative distances; a NaN interval (no rows) just draws none
    err = np.stack([np.nan_to_num(means - lows), np.nan_to_num(highs - means)]).clip(min=0)
    return _grouped_bars(
        list(groups), names, means, err,
        title=f"Ranking metrics by user type, protocol {report.protocol} "
              f"({int(round(100 * (1 - report.alpha)))}% bootstrap CI)",
        ylim=(0.0, 1.05),
    )


def error_rates_chart(report: Report) -> Any:
    groups = report.groups()
    values = np.array([[_num(g.rates.get(r)) for r in _ERROR_RATES] for g in groups.values()], dtype=float)
    labels = [r.replace("_rate", "").replace("_", " ") for r in _ERROR_RATES]
    # error rates are usually a few percent: a fixed 0-1 axis would flatten them to nothing
    top = float(np.nanmax(values)) if np.isfinite(values).any() else 0.0
    ylim = (0.0, min(1.05, max(0.05, 1.15 * top)))
    return _grouped_bars(list(groups), labels, values, None, title="Error rates by user type", ylim=ylim)


def plot_metrics_by_user_type(report: Report, path: str | Path) -> Path:
    return _save(metrics_chart(report), path)


def plot_error_rates(report: Report, path: str | Path) -> Path:
    return _save(error_rates_chart(report), path)


def _num(value: float | None) -> float:
    return np.nan if value is None else float(value)


def _grouped_bars(
    groups: Sequence[str],
    series: Sequence[str],
    values: np.ndarray,
    err: np.ndarray | None,
    *,
    title: str,
    ylim: tuple[float, float],
) -> Any:
    plt = _pyplot()
    n_groups, n_series = len(groups), len(series)
    width = 0.8 / max(n_series, 1)
    x = np.arange(n_groups)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.4 * n_groups + 3), 5.0))
    for j, name in enumerate(series):
        xs = x + (j - (n_series - 1) / 2) * width
        missing = np.isnan(values[:, j])
        yerr = None if err is None else np.where(missing, 0.0, err[:, :, j])
        # a missing value gets no bar (height NaN draws nothing), only its label below
        ax.bar(xs, values[:, j], width, yerr=yerr, capsize=2, label=name)
        for xi in xs[missing]:
            ax.text(xi, 0.01 * ylim[1], NA_LABEL, ha="center", va="bottom", rotation=90, fontsize=7)
    finite = values[np.isfinite(values)]
    if finite.size and not finite.any():
        ax.text(0.5, 0.5, ALL_ZERO_NOTE, transform=ax.transAxes, ha="center", va="center", fontsize=12)
    elif not finite.size:
        ax.text(0.5, 0.5, "no values (n/a everywhere)", transform=ax.transAxes, ha="center", va="center",
                fontsize=12)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(*ylim)
    ax.set_title(title)
    # outside the axes: bars near 1.0 (a good model's Hit@10) would sit under an inner legend
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    plt = _pyplot()
    try:
        out = Path(path)
        fig.savefig(out, dpi=110)
    finally:
        plt.close(fig)
    return out

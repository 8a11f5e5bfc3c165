"""Paired comparison of two evaluation runs on the same rows.

Rows are paired by ``row_id``; the two runs must cover exactly the same rows, since comparing
means over different rows would mix a model difference with a sample difference. For each
metric: a paired t-test (scipy), Holm's step-down correction across all metrics compared (they
are one family of questions about the same pair of models), and a seeded percentile bootstrap
interval of the mean difference. Differences are always ``B - A``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from kitrec_fast.eval.metrics import DEFAULT_KS, bootstrap_ci, metric_names
from kitrec_fast.eval.score import (
    PER_ROW_FILE,
    RowScore,
    ScoreReport,
    load_predictions,
    read_row_scores,
    score_rows,
    to_json_safe,
)

__all__ = [
    "RunInput",
    "load_run",
    "holm",
    "paired_t_test",
    "compare_runs",
    "write_comparison",
    "format_comparison_markdown",
]

RunInput = str | Path | ScoreReport | Sequence[RowScore] | Iterable[Mapping[str, Any]]


def load_run(run: RunInput, ks: Sequence[int] = DEFAULT_KS) -> list[RowScore]:
    """Per-row scores from a predictions file, a ``write_report`` directory, a report or rows."""
    if isinstance(run, ScoreReport):
        return list(run.rows)
    if isinstance(run, (str, Path)):
        path = Path(run)
        if path.is_dir():
            per_row = path / PER_ROW_FILE
            if not per_row.exists():
                raise FileNotFoundError(f"{path} is a directory without {PER_ROW_FILE}")
            return read_row_scores(per_row)
        return score_rows(load_predictions(path), ks)
    items = list(run)
    if all(isinstance(r, RowScore) for r in items):
        return items  # type: ignore[return-value]
    return score_rows(items, ks)  # type: ignore[arg-type]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN inputs stay NaN and are not counted)."""
    indexed = [(p, i) for i, p in enumerate(p_values) if not math.isnan(p)]
    indexed.sort()
    m = len(indexed)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))  # monotone: never below an earlier step
        adjusted[i] = running
    return adjusted


def paired_t_test(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(t, two-sided p) of ``b - a``; defined even where scipy returns NaN for zero variance."""
    from scipy import stats

    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if diff.size < 2:
        return math.nan, math.nan
    if np.all(diff == diff[0]):
        # identical differences: no noise, so either no difference at all or a certain one
        return (0.0, 1.0) if diff[0] == 0 else (math.copysign(math.inf, diff[0]), 0.0)
    result = stats.ttest_rel(b, a)
    return float(result.statistic), float(result.pvalue)


def compare_runs(
    a: RunInput,
    b: RunInput,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Compare run B against run A metric by metric (see the module docstring)."""
    rows_a, rows_b = load_run(a, ks), load_run(b, ks)
    by_id_a, by_id_b = _index(rows_a, "A"), _index(rows_b, "B")
    if by_id_a.keys() != by_id_b.keys():
        only_a = len(by_id_a.keys() - by_id_b.keys())
        only_b = len(by_id_b.keys() - by_id_a.keys())
        raise ValueError(
            f"runs cover different rows: {only_a} row_id(s) only in A, {only_b} only in B"
        )
    ids = sorted(by_id_a)
    names = _shared_metric_names(rows_a, rows_b, ks)
    va = np.array([[by_id_a[i].metrics[m] for m in names] for i in ids], dtype=float).reshape(len(ids), len(names))
    vb = np.array([[by_id_b[i].metrics[m] for m in names] for i in ids], dtype=float).reshape(len(ids), len(names))
    tests = [paired_t_test(va[:, j], vb[:, j]) for j in range(len(names))]
    adjusted = holm([p for _, p in tests])
    ci = bootstrap_ci(vb - va, n_bootstrap, seed, alpha)
    metrics = {}
    for j, name in enumerate(names):
        t, p = tests[j]
        metrics[name] = {
            "mean_a": _mean(va[:, j]),
            "mean_b": _mean(vb[:, j]),
            "mean_diff": _mean(vb[:, j] - va[:, j]),
            "ci_low": float(ci[j, 0]),
            "ci_high": float(ci[j, 1]),
            "t": t,
            "p": p,
            "p_holm": adjusted[j],
            "significant": bool(not math.isnan(adjusted[j]) and adjusted[j] < alpha),
        }
    return {
        "a": _label(a),
        "b": _label(b),
        "n_pairs": len(ids),
        "alpha": alpha,
        "bootstrap": {"n_resamples": n_bootstrap, "seed": seed},
        "direction": "B - A",
        "metrics": metrics,
        "by_user_type": _per_type_diffs(ids, by_id_a, by_id_b, names),
    }


def _index(rows: Sequence[RowScore], which: str) -> dict[int, RowScore]:
    out: dict[int, RowScore] = {}
    for row in rows:
        if row.row_id in out:
            raise ValueError(f"run {which} has duplicate row_id {row.row_id}")
        out[row.row_id] = row
    return out


def _shared_metric_names(
    rows_a: Sequence[RowScore], rows_b: Sequence[RowScore], ks: Sequence[int]
) -> list[str]:
    if not rows_a:
        return metric_names(ks)
    # score dirs carry whatever ks they were scored with; compare what both have, in report order
    keys_a, keys_b = set(rows_a[0].metrics), set(rows_b[0].metrics)
    preferred = [m for m in metric_names(ks) if m in keys_a and m in keys_b]
    extra = sorted((keys_a & keys_b) - set(preferred))
    return preferred + extra


def _per_type_diffs(
    ids: Sequence[int], a: Mapping[int, RowScore], b: Mapping[int, RowScore], names: Sequence[str]
) -> dict[str, dict[str, float]]:
    groups: dict[str, list[int]] = {}
    for i in ids:
        groups.setdefault(a[i].user_type, []).append(i)
    return {
        t: {m: _mean(np.array([b[i].metrics[m] - a[i].metrics[m] for i in members])) for m in names}
        for t, members in sorted(groups.items())
    }


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def _label(run: RunInput) -> str:
    if isinstance(run, (str, Path)):
        return str(run)
    if isinstance(run, ScoreReport) and run.source:
        return run.source
    return "<in-memory>"


def write_comparison(result: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write compare.json and compare.md; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "compare.json", "markdown": out / "compare.md"}
    paths["json"].write_text(json.dumps(to_json_safe(dict(result)), indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(format_comparison_markdown(result), encoding="utf-8")
    return paths


def format_comparison_markdown(result: Mapping[str, Any]) -> str:
    pct = int(round(100 * (1 - result["alpha"])))
    lines = [
        "# KitREC run comparison",
        "",
        f"A: `{result['a']}`  ",
        f"B: `{result['b']}`  ",
        f"{result['n_pairs']} paired rows; differences are B - A; paired t-test with Holm "
        f"correction across metrics; {pct}% bootstrap interval of the mean difference.",
        "",
        "| metric | A | B | B - A | CI | p | p (Holm) | significant |",
        "|---|---:|---:|---:|---|---:|---:|:---:|",
    ]
    for name, m in result["metrics"].items():
        lines.append(
            f"| {name} | {m['mean_a']:.4f} | {m['mean_b']:.4f} | {m['mean_diff']:+.4f} "
            f"| [{m['ci_low']:+.4f}, {m['ci_high']:+.4f}] | {_p(m['p'])} | {_p(m['p_holm'])} "
            f"| {'yes' if m['significant'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def _p(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.4f}"

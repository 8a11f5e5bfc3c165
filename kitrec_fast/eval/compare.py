"""Paired comparison of two evaluation runs on the same rows (or of several runs with one baseline).

Rows are paired by ``row_id``; the two runs must cover exactly the same rows, since comparing
means over different rows would mix a model difference with a sample difference. They must also
have been scored under the same protocol and from prompts with the same number of candidates
per row (Hit@10 among 50 candidates is an easier task than among 100): otherwise the comparison
is refused, unless ``force`` is given, which records a warning in the result instead.

A run is a predictions JSONL file (scored here under ``protocol``), an ``eval score`` output
directory (its ``per_row.jsonl`` and the protocol its ``report.json`` names), or an ``eval
generate`` output directory (its ``score/`` when that is newer than ``predictions.jsonl``,
otherwise its predictions scored here). For each
metric: a paired t-test (scipy), Holm's step-down correction across all metrics compared (they
are one family of questions about the same pair of models), and a seeded percentile bootstrap
interval of the mean difference. Differences are always ``B - A``.

Several runs against one baseline (:func:`compare_many`, ``eval compare BASELINE RUN RUN ...``):
each run is paired with the baseline as above, and Holm's correction runs once over every
(run, metric) test, since all of them answer one question (does any run differ from the
baseline?); correcting per run would let the chance of a false "significant" grow with the
number of runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from kitrec_fast.errors import UserError
from kitrec_fast.eval.metrics import DEFAULT_KS, bootstrap_ci, metric_names
from kitrec_fast.eval.protocol import DEFAULT_PROTOCOL, check_protocol
from kitrec_fast.eval.score import (
    PER_ROW_FILE,
    REPORT_FILE,
    RowScore,
    ScoreReport,
    load_predictions,
    read_provenance,
    read_row_scores,
    score_rows,
    to_json_safe,
)
from kitrec_fast.fsio import atomic_write_json, atomic_write_text

__all__ = [
    "CompareError",
    "Run",
    "comparability_problems",
    "fmt_num",
    "fmt_p",
    "RunInput",
    "load_run",
    "holm",
    "paired_t_test",
    "compare_runs",
    "compare_many",
    "write_comparison",
    "format_comparison_markdown",
]

RunInput = str | Path | ScoreReport | Sequence[RowScore] | Iterable[Mapping[str, Any]]
PREDICTIONS_FILE = "predictions.jsonl"
SCORE_SUBDIR = "score"


class CompareError(UserError, ValueError):
    """Two runs that cannot be compared (or an input that is not a run)."""


@dataclass
class Run:
    rows: list[RowScore]
    protocol: str | None  # None: a score directory from before protocols were recorded
    label: str
    base: str | None = None  # the base served ("original", "trained (<fingerprint>)"); None: not recorded


def load_run(run: RunInput, ks: Sequence[int] = DEFAULT_KS, protocol: str = DEFAULT_PROTOCOL) -> Run:
    """Per-row scores (and the protocol they were scored under) from any of the inputs above."""
    check_protocol(protocol)
    if isinstance(run, ScoreReport):
        return Run(list(run.rows), run.protocol, run.source or "<in-memory>", run.provenance.get("base"))
    if isinstance(run, (str, Path)):
        path = Path(run)
        if path.is_dir():
            return _load_dir(path, ks, protocol)
        if not path.is_file():
            raise CompareError(f"{path}: no such file or directory")
        return Run(score_rows(load_predictions(path), ks, protocol), protocol, str(path),
                   read_provenance(path).get("base"))
    items = list(run)
    if items and all(isinstance(r, RowScore) for r in items):
        return Run(items, protocol, "<in-memory>")  # type: ignore[arg-type]
    return Run(score_rows(items, ks, protocol), protocol, "<in-memory>")  # type: ignore[arg-type]


def _load_dir(path: Path, ks: Sequence[int], protocol: str) -> Run:
    if (path / PER_ROW_FILE).is_file():
        return _load_score_dir(path)
    predictions, score = path / PREDICTIONS_FILE, path / SCORE_SUBDIR
    if (score / PER_ROW_FILE).is_file():
        stale = predictions.is_file() and predictions.stat().st_mtime > (score / PER_ROW_FILE).stat().st_mtime
        if not stale:
            return _load_score_dir(score)
    if predictions.is_file():
        return Run(score_rows(load_predictions(predictions), ks, protocol), protocol, str(predictions),
                   read_provenance(predictions).get("base"))
    raise CompareError(f"{path}: neither an `eval score` output ({PER_ROW_FILE}) nor an `eval generate` output "
                       f"({PREDICTIONS_FILE})")


def _load_score_dir(path: Path) -> Run:
    try:
        report = json.loads((path / REPORT_FILE).read_text(encoding="utf-8"))
        protocol = (report.get("protocol") or {}).get("name")
        base = (report.get("provenance") or {}).get("base")
    except (OSError, ValueError, AttributeError):
        protocol = base = None
    return Run(read_row_scores(path / PER_ROW_FILE), protocol, str(path), base)


def comparability_problems(a: Run, b: Run, ids: Sequence[int]) -> list[str]:
    """Why the paired rows of ``a`` and ``b`` do not measure the same task (empty: they do)."""
    problems = []
    if a.protocol is None or b.protocol is None:
        which = " and ".join(w for w, r in (("A", a), ("B", b)) if r.protocol is None)
        problems.append(f"the protocol of {which} is not recorded (a report from before protocols; "
                        "rescore its predictions)")
    elif a.protocol != b.protocol:
        problems.append(f"protocols differ: A was scored with {a.protocol!r}, B with {b.protocol!r}")
    ra, rb = {r.row_id: r for r in a.rows}, {r.row_id: r for r in b.rows}
    differ = [i for i in ids if ra[i].n_candidates != rb[i].n_candidates]
    if differ:
        first = differ[0]
        problems.append(f"candidate counts differ on {len(differ)} of {len(ids)} rows (row_id {first}: "
                        f"A had {ra[first].n_candidates}, B had {rb[first].n_candidates}); Hit@K over "
                        "different candidate counts is a different task")
    return problems


def _base_note(a: Run, b: Run) -> list[str]:
    """A comparison across served bases is allowed (measuring that choice is its point), and said."""
    if a.base == b.base or a.base is None or b.base is None:
        return []
    return [f"bases differ: A was served on the {a.base} base, B on the {b.base} base; the difference "
            "includes the base choice"]


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


def compare_runs(a: RunInput, b: RunInput, **options: Any) -> dict[str, Any]:
    """Compare run B against run A metric by metric (see the module docstring); ``options`` as
    :func:`compare_many`."""
    return compare_many(a, [b], **options)["comparisons"][0]


def compare_many(
    baseline: RunInput,
    runs: Sequence[RunInput],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    protocol: str = DEFAULT_PROTOCOL,
    force: bool = False,
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Each of ``runs`` against ``baseline``: one pairwise result per run, and ONE Holm family over
    every (run, metric) test, since "does any run differ from the baseline on anything" is a single
    question asked many times. With one run this is exactly :func:`compare_runs`."""
    base = load_run(baseline, ks, protocol)
    results = [_pair(base, load_run(r, ks, protocol), ks, force, n_bootstrap, seed, alpha) for r in runs]
    _apply_holm(results, alpha)
    return {"baseline": base.label, "alpha": alpha, "direction": "run - baseline",
            "holm_family": sum(len(r["metrics"]) for r in results), "comparisons": results}


def _apply_holm(results: Sequence[dict[str, Any]], alpha: float) -> None:
    """Holm-adjust every p-value of ``results`` as one family, in place."""
    cells = [m for r in results for m in r["metrics"].values()]
    for m, adjusted in zip(cells, holm([m["p"] for m in cells])):
        m["p_holm"] = adjusted
        m["significant"] = bool(not math.isnan(adjusted) and adjusted < alpha)


def _pair(run_a: Run, run_b: Run, ks: Sequence[int], force: bool, n_bootstrap: int, seed: int,
          alpha: float) -> dict[str, Any]:
    """B against A before any multiple-testing correction (``p_holm`` is filled in by the caller)."""
    rows_a, rows_b = run_a.rows, run_b.rows
    by_id_a, by_id_b = _index(rows_a, "A"), _index(rows_b, "B")
    if by_id_a.keys() != by_id_b.keys():
        only_a = len(by_id_a.keys() - by_id_b.keys())
        only_b = len(by_id_b.keys() - by_id_a.keys())
        raise CompareError(
            f"runs cover different rows: {only_a} row_id(s) only in A ({run_a.label}), {only_b} only in B "
            f"({run_b.label})"
        )
    ids = sorted(by_id_a)
    problems = comparability_problems(run_a, run_b, ids)
    if problems and not force:
        raise CompareError(f"{run_a.label} and {run_b.label} are not comparable: " + "; ".join(problems)
                           + " (--force compares them anyway, with a warning in the result)")
    names = _shared_metric_names(rows_a, rows_b, ks)
    va = np.array([[by_id_a[i].metrics[m] for m in names] for i in ids], dtype=float).reshape(len(ids), len(names))
    vb = np.array([[by_id_b[i].metrics[m] for m in names] for i in ids], dtype=float).reshape(len(ids), len(names))
    tests = [paired_t_test(va[:, j], vb[:, j]) for j in range(len(names))]
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
        }
    cands = sorted({r.n_candidates for r in rows_a + rows_b if r.n_candidates is not None})
    return {
        "a": run_a.label,
        "b": run_b.label,
        "protocol": {"a": run_a.protocol, "b": run_b.protocol},
        "candidates_per_row": {"min": cands[0], "max": cands[-1]} if cands else {"min": None, "max": None},
        "warnings": [f"NOT COMPARABLE, compared because of --force: {p}" for p in problems] + _base_note(run_a, run_b),
        "base": {"a": run_a.base, "b": run_b.base},
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
            raise CompareError(f"run {which} has duplicate row_id {row.row_id}")
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


def write_comparison(result: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write compare.json and compare.md; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "compare.json", "markdown": out / "compare.md"}
    atomic_write_json(paths["json"], to_json_safe(dict(result)))
    atomic_write_text(paths["markdown"], format_comparison_markdown(result))
    return paths


def format_comparison_markdown(result: Mapping[str, Any]) -> str:
    if "comparisons" in result:
        return _format_many_markdown(result)
    pct = int(round(100 * (1 - result["alpha"])))
    lines = [
        "# KitREC run comparison",
        "",
        f"A: `{result['a']}`  ",
        f"B: `{result['b']}`  ",
        f"Protocol: A {result['protocol']['a']}, B {result['protocol']['b']}; candidates per row: "
        f"{_span(result['candidates_per_row'])}  ",
        f"{result['n_pairs']} paired rows; differences are B - A; paired t-test with Holm "
        f"correction across metrics; {pct}% bootstrap interval of the mean difference.",
        "",
    ]
    lines += [f"**{w}**  " for w in result.get("warnings", [])]
    lines += [
        "",
        "| metric | A | B | B - A | CI | p | p (Holm) | significant |",
        "|---|---:|---:|---:|---|---:|---:|:---:|",
    ]
    for name, m in result["metrics"].items():
        lines.append(
            f"| {name} | {fmt_num(m['mean_a'])} | {fmt_num(m['mean_b'])} | {fmt_num(m['mean_diff'], signed=True)} "
            f"| [{fmt_num(m['ci_low'], signed=True)}, {fmt_num(m['ci_high'], signed=True)}] | {fmt_p(m['p'])} "
            f"| {fmt_p(m['p_holm'])} | {'yes' if m['significant'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def _format_many_markdown(result: Mapping[str, Any]) -> str:
    pct = int(round(100 * (1 - result["alpha"])))
    comps = result["comparisons"]
    lines = [
        "# KitREC run comparison against a baseline",
        "",
        f"Baseline: `{result['baseline']}`  ",
        f"{len(comps)} runs, each paired with the baseline on the same rows; differences are run - baseline; "
        f"paired t-test with one Holm correction over all {result['holm_family']} (run, metric) tests; "
        f"{pct}% bootstrap interval of the mean difference.",
        "",
    ]
    for comp in comps:
        lines.append(f"- `{comp['b']}`: {comp['n_pairs']} paired rows, protocol {comp['protocol']['b']}, "
                     f"candidates per row {_span(comp['candidates_per_row'])}")
    lines += [f"**{w}**  " for comp in comps for w in comp.get("warnings", [])]
    lines += [
        "",
        "| run | metric | baseline | run | run - baseline | CI | p | p (Holm) | significant |",
        "|---|---|---:|---:|---:|---|---:|---:|:---:|",
    ]
    for comp in comps:
        for name, m in comp["metrics"].items():
            lines.append(
                f"| `{comp['b']}` | {name} | {fmt_num(m['mean_a'])} | {fmt_num(m['mean_b'])} "
                f"| {fmt_num(m['mean_diff'], signed=True)} "
                f"| [{fmt_num(m['ci_low'], signed=True)}, {fmt_num(m['ci_high'], signed=True)}] | {fmt_p(m['p'])} "
                f"| {fmt_p(m['p_holm'])} | {'yes' if m['significant'] else 'no'} |"
            )
    return "\n".join(lines) + "\n"


def _span(c: Mapping[str, Any]) -> str:
    if c.get("min") is None:
        return "unknown"
    return str(c["min"]) if c["min"] == c["max"] else f"{c['min']}-{c['max']}"


def fmt_num(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def fmt_p(value: float | None) -> str:
    """p-values as people read them: 4 decimals, and "<0.0001" rather than an exponent."""
    if value is None or math.isnan(value):
        return "n/a"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"

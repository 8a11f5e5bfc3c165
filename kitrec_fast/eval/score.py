"""Score a predictions file: ranking metrics overall and per user type, with error rates.

Predictions file contract (JSONL, one line per evaluated row; written by ``eval generate``)::

    {"row_id": int,              # unique within the file; pairs rows across runs in `compare`
     "user_id": str,
     "user_type": str,           # e.g. "overlapping_books_music", "cold_start_2core_movies"
     "gt_item_id": str,          # ground-truth item id
     "gt_rating": float | null,  # the user's 1-5 rating of the ground truth, if known
     "candidate_ids": [str, ...],  # the ids of the candidates in the prompt the model saw
     "raw_text": str,            # the whole generation, think block included
     "gen_seconds": float,       # wall time of the generation
     "new_tokens": int}          # generated tokens

``row_id``, ``gt_item_id``, ``candidate_ids`` and ``raw_text`` are required; the rest may be
missing or null (``user_type`` then counts as ``"unknown"``). Scoring parses ``raw_text``
against ``candidate_ids`` here rather than trusting a parse done at generation time, so a
better parser can rescore old generations without regenerating.

Error rates: ``parse_failure_rate`` is the share of rows with no usable JSON (scored as misses);
``invalid_item_rate`` and ``duplicate_rate`` are shares of all JSON entries emitted;
``unfinished_think_rate`` is the share of rows whose ``<think>`` was never closed.
Calibration uses the ``confidence_score`` of the first-ranked valid item (the model's confidence
in its top pick) halved onto the 1-5 scale, against ``gt_rating``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from kitrec_fast.eval.metrics import (
    DEFAULT_KS,
    bootstrap_ci,
    calibration_errors,
    group_seed,
    metric_names,
    rank_metrics,
)
from kitrec_fast.eval.parse import parse_recommendations

__all__ = [
    "REQUIRED_KEYS",
    "RowScore",
    "GroupScore",
    "ScoreReport",
    "load_predictions",
    "score_row",
    "score_rows",
    "score_predictions",
    "write_report",
    "read_row_scores",
    "format_markdown",
    "to_json_safe",
]

REQUIRED_KEYS = ("row_id", "gt_item_id", "candidate_ids", "raw_text")
OVERALL = "overall"
PER_ROW_FILE = "per_row.jsonl"


@dataclass
class RowScore:
    """Everything scoring needs from one row, after parsing; a line of ``per_row.jsonl``."""

    row_id: int
    user_type: str
    metrics: dict[str, float]
    parse_failed: bool
    n_items: int
    n_ranked: int
    n_invalid: int
    n_duplicates: int
    think_closed: bool
    confidence: float | None = None
    gt_rating: float | None = None
    gen_seconds: float | None = None
    new_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RowScore":
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})


@dataclass
class GroupScore:
    """Aggregates for one user type (or all rows)."""

    n: int
    metrics: dict[str, float]
    ci: dict[str, tuple[float, float]]
    counts: dict[str, int]
    rates: dict[str, float | None]
    calibration: dict[str, float | int | None]
    generation: dict[str, float | None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "metrics": self.metrics,
            "ci": {k: list(v) for k, v in self.ci.items()},
            "counts": self.counts,
            "rates": self.rates,
            "calibration": self.calibration,
            "generation": self.generation,
        }


@dataclass
class ScoreReport:
    overall: GroupScore
    by_user_type: dict[str, GroupScore]
    metric_names: list[str]
    n_bootstrap: int
    seed: int
    alpha: float
    source: str | None = None
    rows: list[RowScore] = field(default_factory=list, repr=False)

    def groups(self) -> dict[str, GroupScore]:
        """Overall first, then user types in name order."""
        return {OVERALL: self.overall, **self.by_user_type}

    def to_dict(self) -> dict[str, Any]:
        return to_json_safe(
            {
                "source": self.source,
                "metric_names": self.metric_names,
                "bootstrap": {"n_resamples": self.n_bootstrap, "seed": self.seed, "alpha": self.alpha},
                "overall": self.overall.to_dict(),
                "by_user_type": {k: v.to_dict() for k, v in self.by_user_type.items()},
            }
        )


def load_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Read and check a predictions JSONL file (blank lines are skipped)."""
    records = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            _check_record(record, f"{path}:{lineno}")
            records.append(record)
    return records


def _check_record(record: Any, where: str) -> None:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a prediction must be a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ValueError(f"{where}: missing required keys {missing}")
    if not isinstance(record["candidate_ids"], list):
        raise ValueError(f"{where}: candidate_ids must be a list")


def score_row(record: Mapping[str, Any], ks: Sequence[int] = DEFAULT_KS) -> RowScore:
    parsed = parse_recommendations(record.get("raw_text") or "", record["candidate_ids"])
    gt = str(record["gt_item_id"]).strip()
    return RowScore(
        row_id=int(record["row_id"]),
        user_type=str(record.get("user_type") or "unknown"),
        metrics=rank_metrics(parsed.ranked_ids, gt, ks),
        parse_failed=parsed.parse_failed,
        n_items=parsed.n_items,
        n_ranked=len(parsed.ranked_ids),
        n_invalid=parsed.n_invalid,
        n_duplicates=parsed.n_duplicates,
        think_closed=parsed.think_closed,
        confidence=parsed.confidence,
        gt_rating=_optional_float(record.get("gt_rating")),
        gen_seconds=_optional_float(record.get("gen_seconds")),
        new_tokens=None if record.get("new_tokens") is None else int(record["new_tokens"]),
    )


def score_rows(
    records: Iterable[Mapping[str, Any]], ks: Sequence[int] = DEFAULT_KS
) -> list[RowScore]:
    """Score each record, refusing duplicate row ids (they would double-count and break pairing)."""
    rows, seen = [], set()
    for i, record in enumerate(records):
        _check_record(record, f"record {i}")
        row = score_row(record, ks)
        if row.row_id in seen:
            raise ValueError(f"duplicate row_id {row.row_id}")
        seen.add(row.row_id)
        rows.append(row)
    return rows


def score_predictions(
    path_or_records: str | Path | Iterable[Mapping[str, Any]],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> ScoreReport:
    """Parse and score every prediction; see the module docstring for the file contract."""
    source = None
    if isinstance(path_or_records, (str, Path)):
        source = str(path_or_records)
        records: Iterable[Mapping[str, Any]] = load_predictions(path_or_records)
    else:
        records = path_or_records
    rows = score_rows(records, ks)
    return aggregate(rows, metric_names(ks), n_bootstrap=n_bootstrap, seed=seed, alpha=alpha, source=source)


def aggregate(
    rows: Sequence[RowScore],
    names: Sequence[str],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    source: str | None = None,
) -> ScoreReport:
    by_type: dict[str, list[RowScore]] = {}
    for row in rows:
        by_type.setdefault(row.user_type, []).append(row)
    return ScoreReport(
        overall=_group(rows, names, n_bootstrap, group_seed(seed, OVERALL), alpha),
        by_user_type={
            t: _group(by_type[t], names, n_bootstrap, group_seed(seed, t), alpha)
            for t in sorted(by_type)
        },
        metric_names=list(names),
        n_bootstrap=n_bootstrap,
        seed=seed,
        alpha=alpha,
        source=source,
        rows=list(rows),
    )


def _group(
    rows: Sequence[RowScore], names: Sequence[str], n_bootstrap: int, seed: int, alpha: float
) -> GroupScore:
    n = len(rows)
    values = np.array([[r.metrics[m] for m in names] for r in rows], dtype=float).reshape(n, len(names))
    means = values.mean(axis=0) if n else np.full(len(names), np.nan)
    ci = bootstrap_ci(values, n_bootstrap, seed, alpha)
    n_items = sum(r.n_items for r in rows)
    counts = {
        "rows": n,
        "parse_failed": sum(r.parse_failed for r in rows),
        "items_emitted": n_items,
        "items_ranked": sum(r.n_ranked for r in rows),
        "invalid_items": sum(r.n_invalid for r in rows),
        "duplicate_items": sum(r.n_duplicates for r in rows),
        "rows_with_invalid": sum(r.n_invalid > 0 for r in rows),
        "unfinished_think": sum(not r.think_closed for r in rows),
    }
    rates = {
        "parse_failure_rate": _ratio(counts["parse_failed"], n),
        "invalid_item_rate": _ratio(counts["invalid_items"], n_items),
        "duplicate_rate": _ratio(counts["duplicate_items"], n_items),
        "rows_with_invalid_rate": _ratio(counts["rows_with_invalid"], n),
        "unfinished_think_rate": _ratio(counts["unfinished_think"], n),
        "mean_list_length": _ratio(counts["items_ranked"], n),
    }
    return GroupScore(
        n=n,
        metrics={m: float(v) for m, v in zip(names, means)},
        ci={m: (float(lo), float(hi)) for m, (lo, hi) in zip(names, ci)},
        counts=counts,
        rates=rates,
        calibration=calibration_errors([r.confidence for r in rows], [r.gt_rating for r in rows]),
        generation=_generation_stats(rows),
    )


def _generation_stats(rows: Sequence[RowScore]) -> dict[str, float | None]:
    secs = [r.gen_seconds for r in rows if r.gen_seconds is not None]
    toks = [r.new_tokens for r in rows if r.new_tokens is not None]
    timed = [(r.gen_seconds, r.new_tokens) for r in rows if r.gen_seconds and r.new_tokens is not None]
    total_secs = sum(s for s, _ in timed)
    return {
        "mean_seconds": float(np.mean(secs)) if secs else None,
        "mean_new_tokens": float(np.mean(toks)) if toks else None,
        # per-row seconds, not batch wall time: with batched generation this underestimates throughput
        "tokens_per_second": sum(t for _, t in timed) / total_secs if total_secs > 0 else None,
    }


def write_report(report: ScoreReport, out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md, per_row.jsonl and PNG bar charts; return their paths."""
    from kitrec_fast.eval.plots import plot_error_rates, plot_metrics_by_user_type

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "report.json",
        "markdown": out / "report.md",
        "per_row": out / PER_ROW_FILE,
        "metrics_png": out / "metrics_by_user_type.png",
        "errors_png": out / "error_rates_by_user_type.png",
    }
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(format_markdown(report), encoding="utf-8")
    with open(paths["per_row"], "w", encoding="utf-8") as fh:
        for row in report.rows:
            fh.write(json.dumps(to_json_safe(row.to_dict())) + "\n")
    plot_metrics_by_user_type(report, paths["metrics_png"])
    plot_error_rates(report, paths["errors_png"])
    return paths


def read_row_scores(path: str | Path) -> list[RowScore]:
    """Per-row scores from a ``per_row.jsonl`` written by :func:`write_report`."""
    with open(path, encoding="utf-8") as fh:
        return [RowScore.from_dict(json.loads(line)) for line in fh if line.strip()]


def format_markdown(report: ScoreReport) -> str:
    names = report.metric_names
    pct = int(round(100 * (1 - report.alpha)))
    lines = [
        "# KitREC evaluation report",
        "",
        f"Source: `{report.source}`  " if report.source else "Source: in-memory records  ",
        f"Rows: {report.overall.n}; {pct}% bootstrap intervals from {report.n_bootstrap} "
        f"resamples (seed {report.seed}).",
        "",
        "## Ranking metrics",
        "",
        "| group | n | " + " | ".join(_label(m) for m in names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for name, g in report.groups().items():
        cells = [f"{_fmt(g.metrics[m])} [{_fmt(g.ci[m][0])}, {_fmt(g.ci[m][1])}]" for m in names]
        lines.append(f"| {name} | {g.n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Errors and calibration",
        "",
        "| group | parse fail | invalid items | duplicates | unfinished think | mean list len "
        "| conf MAE | conf RMSE | n calibrated |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, g in report.groups().items():
        r, c = g.rates, g.calibration
        lines.append(
            f"| {name} | {_pct(r['parse_failure_rate'])} ({g.counts['parse_failed']}) "
            f"| {_pct(r['invalid_item_rate'])} ({g.counts['invalid_items']}) "
            f"| {_pct(r['duplicate_rate'])} ({g.counts['duplicate_items']}) "
            f"| {_pct(r['unfinished_think_rate'])} | {_fmt(r['mean_list_length'], 2)} "
            f"| {_fmt(c['mae'])} | {_fmt(c['rmse'])} | {c['n']} |"
        )
    lines += [
        "",
        "Invalid/duplicate rates are shares of all JSON entries emitted; calibration compares the "
        "first-ranked item's confidence_score / 2 with gt_rating.",
        "",
    ]
    return "\n".join(lines)


def _label(metric: str) -> str:
    name, _, k = metric.partition("@")
    pretty = {"hit": "Hit", "ndcg": "NDCG", "mrr": "MRR"}.get(name, name)
    return f"{pretty}@{k}" if k else pretty


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else num / den


def _optional_float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def to_json_safe(obj: Any) -> Any:
    """Replace NaN/inf (not valid JSON) with null, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    return obj

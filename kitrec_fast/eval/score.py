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

``finished`` (False: generation hit the token limit) is read when present. Next to a file
written by ``eval generate`` lies ``generate_config.json``; the model, adapter and dataset it
names are copied into the report so a reader can tell whether two reports are comparable.

The ranked list follows ``--protocol`` (``kitrec_fast.eval.protocol``: ``kitrec`` by default,
the paper's rules; ``strict``). Error rates come in two senses. The paper's
``paper_parse_error_rate`` counts every row with any error: no usable answer, or a single id
that is not a candidate. The finer rates: ``parse_failure_rate`` (no usable JSON; scored as
misses), ``invalid_item_rate`` and ``duplicate_rate`` (shares of all JSON entries emitted),
``rows_with_invalid_rate``, ``rows_with_duplicates_rate``, ``truncated_answer_rate`` (only the
complete items of an array cut off were usable), ``unfinished_think_rate`` (``<think>`` never
closed), ``token_limit_rate`` (generation stopped by the token limit; n/a when the file does not
say), ``empty_output_rate`` and ``confidence_zero_rate``. Calibration uses the
``confidence_score`` of the first valid entry halved onto the 1-5 scale, against ``gt_rating``;
a confidence of 0 is a parse error there (left out of calibration; the row keeps its ranking
metrics).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from kitrec_fast.errors import UserError
from kitrec_fast.eval.metrics import (
    DEFAULT_KS,
    bootstrap_ci,
    calibration_errors,
    group_seed,
    gt_position,
    metric_names,
    position_metrics,
)
from kitrec_fast.eval.parse import parse_recommendations
from kitrec_fast.eval.protocol import DEFAULT_PROTOCOL, PROTOCOLS, check_protocol, ranked_list
from kitrec_fast.fsio import atomic_write_json, atomic_write_text

__all__ = [
    "REQUIRED_KEYS",
    "PredictionsError",
    "RowScore",
    "GroupScore",
    "ScoreReport",
    "load_predictions",
    "read_provenance",
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
REPORT_FILE = "report.json"
GENERATE_CONFIG = "generate_config.json"  # written by `eval generate` beside predictions.jsonl
# What a reader needs to know to tell whether two reports are comparable.
PROVENANCE_KEYS = ("model", "adapter", "backend", "engine", "dataset", "split", "max_candidates",
                   "max_prompt_tokens", "max_new_tokens", "tokenizer")


class PredictionsError(UserError, ValueError):
    """A predictions file or record that breaks the contract in this module's docstring."""


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
    gt_position: int | None = None
    n_candidates: int | None = None
    truncated: bool = False
    finished: bool | None = None  # None: the file does not say
    empty_output: bool = False

    @property
    def paper_error(self) -> bool:
        """The paper's parse error: no usable answer, or any id that is not a candidate."""
        return bool(self.parse_failed or self.n_invalid)

    @property
    def confidence_zero(self) -> bool:
        return self.confidence == 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RowScore":
        defaults = {"truncated": False, "empty_output": False}
        return cls(**{k: data.get(k, defaults.get(k)) for k in cls.__dataclass_fields__})


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
    candidates: dict[str, int | None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "candidates_per_row": self.candidates,
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
    protocol: str = DEFAULT_PROTOCOL
    source: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    rows: list[RowScore] = field(default_factory=list, repr=False)

    def groups(self) -> dict[str, GroupScore]:
        """Overall first, then user types in name order."""
        return {OVERALL: self.overall, **self.by_user_type}

    def to_dict(self) -> dict[str, Any]:
        return to_json_safe(
            {
                "protocol": {"name": self.protocol, "rules": PROTOCOLS[self.protocol]},
                "rows": self.overall.n,
                "candidates_per_row": self.overall.candidates,
                "provenance": self.provenance,
                "source": self.source,
                "metric_names": self.metric_names,
                "bootstrap": {"n_resamples": self.n_bootstrap, "seed": self.seed, "alpha": self.alpha},
                "overall": self.overall.to_dict(),
                "by_user_type": {k: v.to_dict() for k, v in self.by_user_type.items()},
            }
        )


def load_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Read and check a predictions JSONL file (blank lines are skipped; no records is an error)."""
    records = []
    try:
        fh = open(path, encoding="utf-8")
    except OSError as exc:
        raise PredictionsError(f"--predictions: cannot read {path} ({exc.strerror or exc})") from None
    with fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                if any(rest.strip() for rest in fh):
                    raise PredictionsError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                raise PredictionsError(_torn_last_line(path, lineno, exc.msg)) from None
            _check_record(record, f"{path}:{lineno}")
            records.append(record)
    if not records:
        raise PredictionsError(f"{path} holds no predictions (an empty file: did `eval generate` run to "
                               "its first batch?); nothing to score")
    return records


def _torn_last_line(path: str | Path, lineno: int, problem: str) -> str:
    # eval generate appends and fsyncs batch by batch, so a kill leaves at most this one torn line,
    # which its next run on the same folder cuts off before generating that row again
    where = f"{path}:{lineno}: the last line is not valid JSON ({problem}): cut short, as by a run killed mid-write"
    if (Path(path).parent / GENERATE_CONFIG).is_file():
        return (f"{where}; rerun the same `eval generate` command (same --output): it drops the torn line and "
                "generates that row again, then score")
    return f"{where}; regenerate that row (`eval generate` repairs its own output when rerun) or remove the line"


def read_provenance(predictions: str | Path) -> dict[str, Any]:
    """Model, adapter, dataset, ... from the ``generate_config.json`` beside ``predictions`` ({} if none)."""
    path = Path(predictions).parent / GENERATE_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    fingerprint = config.get("fingerprint") or {}
    out = {k: fingerprint.get(k) for k in PROVENANCE_KEYS if k in fingerprint}
    if config.get("run_dir"):
        out["run_dir"] = config["run_dir"]
    base = config.get("base") or {}
    if base.get("served"):  # original vs trained: the same adapter on two bases are two results
        out["base"] = base["served"] + (f" ({base['fingerprint']})" if base.get("fingerprint") else "")
    return out


def _check_record(record: Any, where: str) -> None:
    if not isinstance(record, dict):
        raise PredictionsError(f"{where}: a prediction must be a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise PredictionsError(f"{where}: missing required keys {missing}")
    if not isinstance(record["candidate_ids"], list):
        raise PredictionsError(f"{where}: candidate_ids must be a list")


def score_row(record: Mapping[str, Any], ks: Sequence[int] = DEFAULT_KS,
              protocol: str = DEFAULT_PROTOCOL) -> RowScore:
    raw_text = record.get("raw_text") or ""
    parsed = parse_recommendations(raw_text, record["candidate_ids"])
    ranked = ranked_list(parsed, protocol)
    position = gt_position(ranked, str(record["gt_item_id"]))
    finished = record.get("finished")
    return RowScore(
        row_id=int(record["row_id"]),
        user_type=str(record.get("user_type") or "unknown"),
        metrics=position_metrics(position, ks),
        parse_failed=parsed.parse_failed,
        n_items=parsed.n_items,
        n_ranked=len(ranked),
        n_invalid=parsed.n_invalid,
        n_duplicates=parsed.n_duplicates,
        think_closed=parsed.think_closed,
        confidence=parsed.confidence,
        gt_rating=_optional_float(record.get("gt_rating")),
        gen_seconds=_optional_float(record.get("gen_seconds")),
        new_tokens=None if record.get("new_tokens") is None else int(record["new_tokens"]),
        gt_position=position,
        n_candidates=len({str(c).strip().upper() for c in record["candidate_ids"]}),
        truncated=parsed.truncated,
        finished=None if finished is None else bool(finished),
        empty_output=not str(raw_text).strip(),
    )


def score_rows(
    records: Iterable[Mapping[str, Any]], ks: Sequence[int] = DEFAULT_KS, protocol: str = DEFAULT_PROTOCOL
) -> list[RowScore]:
    """Score each record, refusing duplicate row ids (they would double-count and break pairing)."""
    check_protocol(protocol)
    rows, seen = [], set()
    for i, record in enumerate(records):
        _check_record(record, f"record {i}")
        row = score_row(record, ks, protocol)
        if row.row_id in seen:
            raise PredictionsError(f"duplicate row_id {row.row_id}")
        seen.add(row.row_id)
        rows.append(row)
    return rows


def score_predictions(
    path_or_records: str | Path | Iterable[Mapping[str, Any]],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    protocol: str = DEFAULT_PROTOCOL,
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> ScoreReport:
    """Parse and score every prediction; see the module docstring for the file contract."""
    source, provenance = None, {}
    if isinstance(path_or_records, (str, Path)):
        source = str(path_or_records)
        records: Iterable[Mapping[str, Any]] = load_predictions(path_or_records)
        provenance = read_provenance(path_or_records)
    else:
        records = path_or_records
    rows = score_rows(records, ks, protocol)
    if not rows:
        raise PredictionsError("no predictions to score")
    return aggregate(rows, metric_names(ks), n_bootstrap=n_bootstrap, seed=seed, alpha=alpha, source=source,
                     protocol=protocol, provenance=provenance)


def aggregate(
    rows: Sequence[RowScore],
    names: Sequence[str],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    source: str | None = None,
    protocol: str = DEFAULT_PROTOCOL,
    provenance: Mapping[str, Any] | None = None,
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
        protocol=protocol,
        source=source,
        provenance=dict(provenance or {}),
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
    told = [r for r in rows if r.finished is not None]
    counts = {
        "rows": n,
        "paper_parse_errors": sum(r.paper_error for r in rows),
        "parse_failed": sum(r.parse_failed for r in rows),
        "items_emitted": n_items,
        "items_ranked": sum(r.n_ranked for r in rows),
        "invalid_items": sum(r.n_invalid for r in rows),
        "duplicate_items": sum(r.n_duplicates for r in rows),
        "rows_with_invalid": sum(r.n_invalid > 0 for r in rows),
        "rows_with_duplicates": sum(r.n_duplicates > 0 for r in rows),
        "truncated_answers": sum(bool(r.truncated) for r in rows),
        "unfinished_think": sum(not r.think_closed for r in rows),
        "token_limit": sum(r.finished is False for r in rows),
        "empty_output": sum(bool(r.empty_output) for r in rows),
        "confidence_zero": sum(r.confidence_zero for r in rows),
    }
    rates = {
        "paper_parse_error_rate": _ratio(counts["paper_parse_errors"], n),
        "parse_failure_rate": _ratio(counts["parse_failed"], n),
        "invalid_item_rate": _ratio(counts["invalid_items"], n_items),
        "duplicate_rate": _ratio(counts["duplicate_items"], n_items),
        "rows_with_invalid_rate": _ratio(counts["rows_with_invalid"], n),
        "rows_with_duplicates_rate": _ratio(counts["rows_with_duplicates"], n),
        "truncated_answer_rate": _ratio(counts["truncated_answers"], n),
        "unfinished_think_rate": _ratio(counts["unfinished_think"], n),
        "token_limit_rate": _ratio(counts["token_limit"], len(told)),
        "empty_output_rate": _ratio(counts["empty_output"], n),
        "confidence_zero_rate": _ratio(counts["confidence_zero"], n),
        "mean_list_length": _ratio(counts["items_ranked"], n),
    }
    cands = [r.n_candidates for r in rows if r.n_candidates is not None]
    # a confidence of 0 is the paper's parse-error marker: no calibration pair from that row
    calibrated = [(r.confidence, r.gt_rating) for r in rows if not r.confidence_zero]
    return GroupScore(
        n=n,
        metrics={m: float(v) for m, v in zip(names, means)},
        ci={m: (float(lo), float(hi)) for m, (lo, hi) in zip(names, ci)},
        counts=counts,
        rates=rates,
        calibration={**calibration_errors([c for c, _ in calibrated], [r for _, r in calibrated]),
                     "confidence_zero": counts["confidence_zero"]},
        generation=_generation_stats(rows),
        candidates={"min": min(cands) if cands else None, "max": max(cands) if cands else None},
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
        "json": out / REPORT_FILE,
        "markdown": out / "report.md",
        "per_row": out / PER_ROW_FILE,
        "metrics_png": out / "metrics_by_user_type.png",
        "errors_png": out / "error_rates_by_user_type.png",
    }
    # per-row scores first: a reader finding report.json can trust per_row.jsonl is from the same scoring
    atomic_write_text(paths["per_row"], "".join(json.dumps(to_json_safe(r.to_dict())) + "\n" for r in report.rows))
    atomic_write_text(paths["markdown"], format_markdown(report))
    plot_metrics_by_user_type(report, paths["metrics_png"])
    plot_error_rates(report, paths["errors_png"])
    atomic_write_json(paths["json"], report.to_dict())
    return paths


def read_row_scores(path: str | Path) -> list[RowScore]:
    """Per-row scores from a ``per_row.jsonl`` written by :func:`write_report`."""
    with open(path, encoding="utf-8") as fh:
        return [RowScore.from_dict(json.loads(line)) for line in fh if line.strip()]


def format_markdown(report: ScoreReport) -> str:
    names = report.metric_names
    pct = int(round(100 * (1 - report.alpha)))
    cands = report.overall.candidates
    prov = report.provenance
    lines = [
        "# KitREC evaluation report",
        "",
        f"Protocol: **{report.protocol}** ({PROTOCOLS[report.protocol]})  ",
        f"Rows: {report.overall.n}; candidates per row: {_span(cands)}  ",
        f"Model: `{prov.get('model', 'unknown')}`; adapter: `{prov.get('adapter', 'unknown')}`; "
        f"dataset: `{prov.get('dataset', 'unknown')}` ({prov.get('split', 'unknown split')})"
        + (f"; base served: {prov['base']}  " if prov.get("base") else "  "),
        f"Source: `{report.source}`  " if report.source else "Source: in-memory records  ",
        f"{pct}% bootstrap intervals from {report.n_bootstrap} resamples (seed {report.seed}).",
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
        "| group | parse errors (paper) | no answer | invalid items | duplicates | truncated answer "
        "| unfinished think | token limit | confidence 0 | mean list len | conf MAE | conf RMSE | n calibrated |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, g in report.groups().items():
        r, c, k = g.rates, g.calibration, g.counts
        lines.append(
            f"| {name} | {_pct(r['paper_parse_error_rate'])} ({k['paper_parse_errors']}) "
            f"| {_pct(r['parse_failure_rate'])} ({k['parse_failed']}) "
            f"| {_pct(r['invalid_item_rate'])} ({k['invalid_items']}) "
            f"| {_pct(r['duplicate_rate'])} ({k['duplicate_items']}) "
            f"| {_pct(r['truncated_answer_rate'])} | {_pct(r['unfinished_think_rate'])} "
            f"| {_pct(r['token_limit_rate'])} | {_pct(r['confidence_zero_rate'])} "
            f"| {_fmt(r['mean_list_length'], 2)} | {_fmt(c['mae'])} | {_fmt(c['rmse'])} | {c['n']} |"
        )
    lines += [
        "",
        "Parse errors (paper): rows with no usable answer or with any id that is not a candidate. "
        "Invalid/duplicate rates are shares of all JSON entries emitted; token limit is a share of the rows "
        "whose file says how generation ended. Calibration compares the first valid entry's "
        "confidence_score / 2 with gt_rating; a confidence of 0 is a parse error there and left out.",
        "",
    ]
    return "\n".join(lines)


def _span(c: Mapping[str, int | None]) -> str:
    if c.get("min") is None:
        return "unknown"
    return str(c["min"]) if c["min"] == c["max"] else f"{c['min']}-{c['max']} (differs between rows)"


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

"""The prepare step: load -> validate -> split -> truncate -> render/mask -> datasets + report.

``prepare(cfg, tokenizer)`` returns the train and validation ``datasets.Dataset`` with columns
``input_ids``, ``labels`` (int32 lists; -100 on the prompt), ``length``, ``num_trained`` and the
row metadata ``user_id``, ``user_type``, ``gt_item_id``, ``candidate_set``, ``target_domain``,
``source_index`` (the row's position in the loaded data), plus a JSON-ready ``report``.
Sequences are not padded (the collator pads with ``<|endoftext|>`` and -100 labels).

Validation rows are truncated and rendered exactly like training rows, so eval_loss measures
the training distribution. The kept negatives are chosen with ``candidate_seed`` (default: the
split seed, ``data.split_seed``). Rows failing validation or unable to fit are errors, or under
``on_bad_row=skip`` are dropped and listed in the report with row number, user id and problem.

Speed: every distinct text chunk of the untruncated renderings is tokenized in one batched call
per block of rows (see ``kitrec_fast.render.chat``); truncation then only sums cached costs and
re-measures assembled texts from the cache. ``verify_rows`` rows, spread evenly over the data, are
re-tokenized as whole texts and must match the chunked ids token for token. There are no worker
processes: the Rust tokenizer already spreads each batch over all cores, and forking workers would
copy the chunk cache and the parsed rows.

Rows are named in messages and in the report's ``skipped`` list by their 1-based position in the
loaded data (the file line for JSON Lines, see ``kitrec_fast.badrow``); the ``source_index``
column keeps the 0-based position. A dataset without rows, or without one valid row, is an error.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from kitrec_fast.badrow import BadRowError, row_label
from kitrec_fast.config import DataConfig
from kitrec_fast.data.load import load_raw
from kitrec_fast.data.schema import KitrecRow, normalize_row
from kitrec_fast.errors import UserError
from kitrec_fast.fsio import atomic_write_text
from kitrec_fast.data.split import stratified_split
from kitrec_fast.render.chat import ChatRenderer, Rendered, RenderError, get_renderer
from kitrec_fast.truncate.sections import CANDIDATES, HISTORY_KINDS
from kitrec_fast.truncate.truncate import TruncateOptions, TruncationRecord, truncate_prompt

SPLITS = ("train", "validation")
META_COLUMNS = ("user_id", "user_type", "gt_item_id", "candidate_set", "target_domain")
CUTTABLE = (CANDIDATES, *HISTORY_KINDS)
WARM_BLOCK = 1024  # rows per batched tokenization call: large enough to keep both cores busy


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset
    validation: Any
    report: dict = field(default_factory=dict)


def percentiles(values: list[int] | np.ndarray) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"count": 0}
    out = {f"p{q}": float(np.percentile(a, q)) for q in (50, 90, 95, 99)}
    out.update(count=int(a.size), min=float(a.min()), max=float(a.max()), mean=round(float(a.mean()), 1))
    return out


class _Measure:
    """``measure`` for truncate_prompt that keeps the last rendering, so the kept text is not rendered twice."""

    def __init__(self, renderer: ChatRenderer, row: KitrecRow):
        self.renderer, self.row = renderer, row
        self.prompt: Optional[str] = None
        self.rendered: Optional[Rendered] = None

    def __call__(self, prompt: str) -> int:
        try:
            self.rendered = self.renderer.render(prompt, self.row.target)
        except RenderError as exc:
            raise RenderError(f"{row_label(self.row.index)}, user_id={self.row.user_id!r}: {exc}") from exc
        self.prompt = prompt
        return self.rendered.length


def _body(renderer: ChatRenderer, row: KitrecRow) -> str:
    try:
        return renderer.body_text(row.prompt, row.target)
    except RenderError as exc:
        raise RenderError(f"{row_label(row.index)}, user_id={row.user_id!r}: {exc}") from exc


class EmptyDatasetError(UserError):
    """The dataset has no rows, or no row survived validation."""


def _skip_entry(exc: BadRowError, stage: str) -> dict:
    return {"row": exc.index + 1, "user_id": exc.user_id, "stage": stage, "problem": exc.problem}


def _validate_and_tokenize(raw: list[dict], cfg: DataConfig, renderer: ChatRenderer, skipped: list[dict],
                           consume: bool) -> tuple[list[KitrecRow], list[int]]:
    """Normalise every row and count its untruncated rendering; tokenization of block k runs in a
    background thread while block k+1 is parsed. With ``consume``, ``raw`` entries and the prompt
    strings are released as soon as the parsed prompt holds them (peak memory ~halves)."""
    rows: list[KitrecRow] = []
    partials: list = []
    for start in range(0, len(raw), WARM_BLOCK):
        block = []
        for i in range(start, min(start + WARM_BLOCK, len(raw))):
            try:
                block.append(normalize_row(raw[i], i, require_target=True))
                if consume:
                    raw[i] = None
            except BadRowError as exc:
                if cfg.on_bad_row == "error":
                    raise
                skipped.append(_skip_entry(exc, "validate"))
        if renderer.chunked:
            partials.extend(renderer.prefetch([_body(renderer, r) for r in block]))
            # a section's last line is merged with the blank line after it in the rendering, so
            # truncation's per-line costs would otherwise tokenize a few lines per row one by one
            renderer.prefetch_lines(ln.text for r in block for b in r.parsed.blocks
                                    if b.kind in CUTTABLE for ln in b.lines)
            if consume:
                for r in block:
                    r.prompt = ""  # parsed.render() is the same text
        rows.extend(block)
    if renderer.chunked:
        renderer.drain()
        before = [renderer.pending_count(p) for p in partials]
    else:
        before = [renderer.count(_body(renderer, r)) for r in rows]
    return rows, before


def _to_dataset(rendered: list[Rendered], rows: list[KitrecRow]):
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    lengths = np.fromiter((r.length for r in rendered), dtype=np.int32, count=len(rendered))
    offsets = np.zeros(len(rendered) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    empty = np.zeros(0, dtype=np.int32)
    ids = np.concatenate([r.input_ids for r in rendered]) if rendered else empty
    # labels in one vectorised pass: -100 from each row's start through its prompt length
    prompt_len = np.fromiter((r.prompt_length for r in rendered), dtype=np.int64, count=len(rendered))
    masked = np.zeros(len(ids) + 1, dtype=np.int32)
    np.add.at(masked, offsets[:-1], 1)
    np.add.at(masked, offsets[:-1] + prompt_len, -1)
    labels = np.where(np.cumsum(masked[:-1]) > 0, np.int32(-100), ids).astype(np.int32)
    cols = {
        "input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids)),
        "labels": pa.ListArray.from_arrays(pa.array(offsets), pa.array(labels)),
        "length": pa.array(lengths),
        "num_trained": pa.array([r.num_trained for r in rendered], type=pa.int32()),
    }
    for name in META_COLUMNS:
        cols[name] = pa.array([getattr(r, name) for r in rows], type=pa.string())
    cols["source_index"] = pa.array([r.index for r in rows], type=pa.int64())
    return Dataset(InMemoryTable(pa.table(cols)))


def prepare(cfg: DataConfig, tokenizer: Any, *, rows: Optional[list[dict]] = None,
            candidate_seed: Optional[int] = None, verify_rows: int = 64,
            progress: Optional[Callable[[str, int, int], None]] = None) -> PreparedData:
    """Build the tokenized train/validation datasets described by ``cfg``.

    ``rows`` replaces loading ``cfg.dataset`` (tests, notebooks); ``progress(stage, done, total)``
    is called now and then for a progress display.
    """
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def tick(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 3)
        return now

    raw = load_raw(cfg.dataset, cfg.dataset_split) if rows is None else rows
    if cfg.limit is not None:
        raw = raw[: cfg.limit]
    if not raw:
        raise EmptyDatasetError(f"data.dataset (--dataset): {cfg.dataset} (split {cfg.dataset_split!r}) has no rows")
    t = tick("load", t0)
    skipped: list[dict] = []
    renderer = get_renderer(tokenizer)
    valid, tokens_before = _validate_and_tokenize(raw, cfg, renderer, skipped, consume=rows is None)
    n_loaded = len(raw)
    if rows is None:
        del raw  # the rows keep what they need; the raw dicts (and unused columns) can go
    if not valid:
        first = skipped[0]
        raise EmptyDatasetError(f"data.dataset (--dataset): none of the {n_loaded} rows of {cfg.dataset} is valid "
                                f"(first: {row_label(first['row'] - 1)}, user_id={first['user_id']!r}: {first['problem']})")
    t = tick("validate_tokenize", t)
    train_idx, val_idx = stratified_split([r.user_type for r in valid], [r.user_id for r in valid],
                                          cfg.val_fraction, cfg.split_seed)

    opts = TruncateOptions(max_length=cfg.max_length, max_candidates=cfg.max_candidates,
                           min_candidates=cfg.min_candidates, history_recent=cfg.history_recent,
                           seed=cfg.split_seed if candidate_seed is None else candidate_seed)
    total = len(valid)
    verify_at = set(np.linspace(0, total - 1, num=min(verify_rows, total), dtype=int).tolist()) if total else set()
    verified = 0
    out_rows: dict[str, list[KitrecRow]] = {s: [] for s in SPLITS}
    out_rendered: dict[str, list[Rendered]] = {s: [] for s in SPLITS}
    records: list[TruncationRecord] = []
    done = 0
    for split, idxs in (("train", train_idx), ("validation", val_idx)):
        for j in idxs:
            row = valid[j]
            measure = _Measure(renderer, row)
            try:
                tr = truncate_prompt(row.parsed, gt_item_id=row.gt_item_id, user_id=row.user_id, measure=measure,
                                     line_costs=renderer.line_costs, options=opts, index=row.index,
                                     tokens_before=tokens_before[j])
            except BadRowError as exc:
                if cfg.on_bad_row == "error":
                    raise
                skipped.append(_skip_entry(exc, "truncate"))
                continue
            rendered = measure.rendered if measure.prompt is tr.prompt else measure.renderer.render(tr.prompt, row.target)
            if done in verify_at:
                _verify(renderer, tr.prompt, row, rendered)
                verified += 1
            # the texts are no longer needed: free them as we go (12k prompts are ~400 MB of str)
            row.parsed, row.prompt, row.target = None, "", ""
            out_rows[split].append(row)
            out_rendered[split].append(rendered)
            records.append(tr.record)
            done += 1
            if progress is not None and done % 500 == 0:
                progress("render", done, total)
    t = tick("truncate_render", t)

    datasets_ = {s: _to_dataset(out_rendered[s], out_rows[s]) for s in SPLITS}
    t = tick("arrow", t)
    report = _report(cfg, tokenizer, n_loaded, valid, train_idx, val_idx, out_rows, out_rendered, records, skipped,
                     renderer, verified, opts)
    timings["total"] = round(time.perf_counter() - t0, 3)
    report["seconds"] = timings
    return PreparedData(datasets_["train"], datasets_["validation"], report)


def _verify(renderer: ChatRenderer, prompt: str, row: KitrecRow, rendered: Rendered) -> None:
    whole = renderer.full_encode(renderer.body_text(prompt, row.target))
    if not np.array_equal(whole, rendered.input_ids):
        raise RenderError(f"{row_label(row.index)}, user_id={row.user_id!r}: chunked tokenization differs from "
                          f"whole-text tokenization ({len(rendered.input_ids)} vs {len(whole)} tokens)")


def _report(cfg, tokenizer, n_loaded, valid, train_idx, val_idx, out_rows, out_rendered, records, skipped,
            renderer, verified, opts) -> dict:
    per_type: dict[str, dict] = defaultdict(lambda: {s: {"in": 0, "out": 0} for s in SPLITS})
    for split, idxs in (("train", train_idx), ("validation", val_idx)):
        for j in idxs:
            per_type[valid[j].user_type][split]["in"] += 1
        for r in out_rows[split]:
            per_type[r.user_type][split]["out"] += 1
    lengths_after = [r.length for s in SPLITS for r in out_rendered[s]]
    trained = [r.num_trained for s in SPLITS for r in out_rendered[s]]
    dropped = Counter()
    for rec in records:
        dropped.update(rec.history_dropped)
    return {
        "dataset": cfg.dataset,
        "tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
        "config": dataclasses.asdict(cfg),
        "candidate_seed": opts.seed,
        "rows": {
            "loaded": n_loaded,
            "valid": len(valid),
            "skipped": len(skipped),
            "train": {"in": len(train_idx), "out": len(out_rows["train"])},
            "validation": {"in": len(val_idx), "out": len(out_rows["validation"])},
        },
        "per_user_type": {k: per_type[k] for k in sorted(per_type)},
        "truncation": {
            "rows_candidates_cut": sum(r.candidates_cut for r in records),
            "rows_candidates_below_max": sum(r.candidates_after < min(opts.max_candidates, r.candidates_before)
                                             for r in records),
            "rows_history_cut": sum(r.history_lines_dropped > 0 for r in records),
            "history_lines_dropped": dict(sorted(dropped.items())),
            "rows_header_rewritten": sum(r.header_rewritten for r in records),
            "rows_needing_remeasure": sum(r.measurements > 1 for r in records),
            "candidates_after": percentiles([r.candidates_after for r in records]),
        },
        "skipped": skipped,
        "skipped_by_stage": dict(Counter(s["stage"] for s in skipped)),
        "tokens": {
            "max_length": cfg.max_length,
            "before": percentiles([r.tokens_before for r in records]),
            "after": percentiles(lengths_after),
            "trained": percentiles(trained),
        },
        "tokenization": {"chunked": renderer.chunked, "distinct_chunks": len(renderer._cache),
                         "rows_verified_whole": verified},
    }


_EMPTY_MARKER = "EMPTY.json"


def save_prepared(prepared: PreparedData, out_dir: str | Path) -> Path:
    """Write train/, validation/ and report.json to ``out_dir``, replacing a previous prepared folder whole.

    Everything is written into a fresh sibling folder first and then swapped in, so ``out_dir``
    never holds the report of one run next to the data of another (also after a crash). A folder
    that is neither empty nor a prepared folder is refused rather than deleted.
    """
    out = Path(out_dir)
    if out.exists():
        _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.new-"))
    try:
        for name, split in (("train", prepared.train), ("validation", prepared.validation)):
            if len(split) == 0:
                # datasets 4.x writes an empty split that load_from_disk cannot read back (no arrow
                # table), so an empty split is a marker; load_prepared rebuilds it with the schema.
                (tmp / name).mkdir()
                (tmp / name / _EMPTY_MARKER).write_text(json.dumps({"columns": split.column_names}) + "\n")
                continue
            split.save_to_disk(str(tmp / name))
        atomic_write_text(tmp / "report.json", json.dumps(prepared.report, indent=2, ensure_ascii=False) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            out.rename(old / out.name)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


_PREPARED_ENTRIES = {"train", "validation", "report.json"}


def _check_replaceable(out: Path) -> None:
    if not out.is_dir():
        raise UserError(f"--output {out}: exists and is not a directory")
    entries = {p.name for p in out.iterdir()}
    if entries and not (entries <= _PREPARED_ENTRIES and "report.json" in entries):
        raise UserError(f"--output {out}: the folder holds other files ({', '.join(sorted(entries)[:5])}); "
                        "prepared data replaces its output folder whole, so name a new or a prepared folder")


def load_prepared(path: str | Path) -> PreparedData:
    from datasets import load_from_disk

    p = Path(path)
    report = json.loads((p / "report.json").read_text()) if (p / "report.json").is_file() else {}
    loaded = {name: None if (p / name / _EMPTY_MARKER).is_file() else load_from_disk(str(p / name))
              for name in ("train", "validation")}
    schema = next((d for d in loaded.values() if d is not None), None)
    for name, split in loaded.items():
        if split is None:
            from datasets import Dataset

            columns = json.loads((p / name / _EMPTY_MARKER).read_text())["columns"]
            features = schema.features if schema is not None else None
            loaded[name] = Dataset.from_dict({c: [] for c in columns}, features=features)
    return PreparedData(loaded["train"], loaded["validation"], report)

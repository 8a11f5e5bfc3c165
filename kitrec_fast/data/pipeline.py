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

Memory does not grow with the rows: rows stream through in blocks (see ``prepare``), the chunk
cache is bounded (``kitrec_fast.render.chat.ChunkCache``), the tokenized rows go to an Arrow file
that is split into one file per split by reading it block by block, and each split is
memory-mapped without being read (``save_prepared`` copies its file). What is kept per row is a few
numbers and ids for the split and the report.

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
import itertools
import json
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

from kitrec_fast.badrow import BadRowError, UnreadableLine, row_label
from kitrec_fast.config import DataConfig
from kitrec_fast.data.load import iter_raw
from kitrec_fast.data.schema import KitrecRow, normalize_row
from kitrec_fast.errors import UserError
from kitrec_fast.fsio import atomic_write_text
from kitrec_fast.data.split import stratified_split
from kitrec_fast.render.chat import ChatRenderer, Rendered, RenderError, get_renderer
from kitrec_fast.truncate.sections import CANDIDATES, HISTORY_KINDS
from kitrec_fast.truncate.truncate import TruncateOptions, TruncationRecord, cited_candidates, truncate_prompt

SPLITS = ("train", "validation")
META_COLUMNS = ("user_id", "user_type", "gt_item_id", "candidate_set", "target_domain")
CUTTABLE = (CANDIDATES, *HISTORY_KINDS)
WARM_BLOCK = 256  # rows in flight: parse + tokenize + truncate; 256 keeps both cores busy with ~60 MB of rows


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset
    validation: Any
    report: dict = field(default_factory=dict)
    # split -> (Arrow file it was mapped from, its fingerprint then), set by ``prepare``:
    # ``save_prepared`` copies the file instead of reading every row back through the mapping
    files: dict[str, tuple[str, str]] = field(default_factory=dict)


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


def _blocks(raw: Iterable[dict], size: int) -> Iterator[list[tuple[int, dict]]]:
    """``(position, raw row)`` pairs in blocks of ``size``; with an iterator nothing is read ahead."""
    block: list[tuple[int, dict]] = []
    for i, r in enumerate(raw):
        block.append((i, r))
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


@dataclass
class _Kept:
    """What the report and the split need of a row once its texts are gone."""

    user_type: str
    user_id: str
    length: int = -1  # -1: skipped at truncation, not written
    num_trained: int = 0


class _ArrowSink:
    """Appends rendered rows to an Arrow file in blocks; the result is memory-mapped, not held in RAM.

    12k rows at ~4.5k tokens are ~430 MB of ids+labels; building them as one in-memory table took
    three transient copies (concatenated ids, labels, Arrow buffers) and was the peak of the whole
    step. The file lives in a private temporary folder removed at exit.
    """

    def __init__(self):
        import atexit
        import shutil
        import tempfile

        import pyarrow as pa

        self._dir = tempfile.mkdtemp(prefix="kitrec-prepare-")
        atexit.register(shutil.rmtree, self._dir, True)
        self.path = str(Path(self._dir) / "rows.arrow")
        fields = [("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())), ("length", pa.int32()),
                  ("num_trained", pa.int32())]
        fields += [(name, pa.string()) for name in META_COLUMNS] + [("source_index", pa.int64())]
        self.schema = pa.schema(fields)
        self._writer = pa.ipc.new_stream(self.path, self.schema)
        self.rows = 0

    def write(self, rendered: list[Rendered], rows: list[KitrecRow]) -> None:
        import pyarrow as pa

        if not rendered:
            return
        lengths = np.fromiter((r.length for r in rendered), dtype=np.int32, count=len(rendered))
        offsets = np.zeros(len(rendered) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.concatenate([r.input_ids for r in rendered]).astype(np.int32, copy=False)
        labels = np.concatenate([r.labels for r in rendered])
        cols = [pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids)),
                pa.ListArray.from_arrays(pa.array(offsets), pa.array(labels)),
                pa.array(lengths), pa.array([r.num_trained for r in rendered], type=pa.int32())]
        cols += [pa.array([getattr(r, name) for r in rows], type=pa.string()) for name in META_COLUMNS]
        cols.append(pa.array([r.index for r in rows], type=pa.int64()))
        self._writer.write_batch(pa.record_batch(cols, schema=self.schema))
        self.rows += len(rendered)

    def split(self, assign: np.ndarray, names: tuple[str, ...]) -> dict[str, tuple[Any, str]]:
        """One memory-mapped ``datasets.Dataset`` per name, from the rows written, in input order:
        written row ``p`` goes to ``names[assign[p]]``. Returns ``{name: (dataset, file)}``; a name
        without rows gets ``(None, "")``.

        The rows file is read back block by block, not mapped: every page of a mapped file that is
        read stays in the process's resident memory while the mapping lives, so selecting the
        splits from a mapping (and saving them) held the whole tokenized data by the end.
        """
        import pyarrow as pa
        from datasets import Dataset

        self._writer.close()
        paths = {name: str(Path(self._dir) / f"{name}.arrow") for name in names}
        counts = dict.fromkeys(names, 0)
        writers = {name: pa.ipc.new_stream(paths[name], self.schema) for name in names}
        start = 0
        with pa.OSFile(self.path) as src:
            for batch in pa.ipc.open_stream(src):
                part = assign[start:start + batch.num_rows]
                start += batch.num_rows
                for k, name in enumerate(names):
                    mask = part == k
                    if mask.any():
                        writers[name].write_batch(batch if mask.all() else batch.filter(pa.array(mask)))
                        counts[name] += int(mask.sum())
        for w in writers.values():
            w.close()
        Path(self.path).unlink()
        return {name: (Dataset.from_file(paths[name], in_memory=False), paths[name]) if counts[name] else (None, "")
                for name in names}


def prepare(cfg: DataConfig, tokenizer: Any, *, rows: Optional[list[dict]] = None,
            candidate_seed: Optional[int] = None, verify_rows: int = 64,
            progress: Optional[Callable[[str, int, int], None]] = None) -> PreparedData:
    """Build the tokenized train/validation datasets described by ``cfg``.

    ``rows`` replaces loading ``cfg.dataset`` (tests, notebooks); ``progress(stage, done, total)``
    is called after every block of rows.

    Rows stream through in blocks of ``WARM_BLOCK``: parse -> tokenize the untruncated rendering
    (in a background thread, overlapping the truncation of the previous block) -> truncate ->
    render -> append to an Arrow file. Truncation does not depend on the split, so the split is
    drawn at the end from the rows' user types and ids, exactly as if all rows were held.
    """
    t0 = time.perf_counter()
    raw, total = (iter_raw(cfg.dataset, cfg.dataset_split, skip_bad_lines=cfg.on_bad_row == "skip") if rows is None
                  else (rows, len(rows)))
    if cfg.limit is not None:
        raw, total = itertools.islice(raw, cfg.limit), min(total, cfg.limit)
    if not total:
        raise EmptyDatasetError(f"data.dataset (--dataset): {cfg.dataset} (split {cfg.dataset_split!r}) has no rows")
    skipped: list[dict] = []
    renderer = get_renderer(tokenizer)
    tokenized_before = renderer.chunks_tokenized
    opts = TruncateOptions(max_length=cfg.max_length, max_candidates=cfg.max_candidates,
                           min_candidates=cfg.min_candidates, history_recent=cfg.history_recent,
                           seed=cfg.split_seed if candidate_seed is None else candidate_seed,
                           keep_cited=cfg.keep_cited_candidates)
    kept: list[_Kept] = []  # one per valid row, input order
    records: list[TruncationRecord] = []
    sink = _ArrowSink()
    verify_at = set(np.linspace(0, total - 1, num=min(verify_rows, total), dtype=int).tolist()) if total else set()
    verified = 0
    n_loaded = 0

    def finish_block(block: list[KitrecRow], partials: Optional[list]) -> None:
        nonlocal verified
        out_rows, out_rendered = [], []
        for k, row in enumerate(block):
            before = renderer.pending_count(partials[k]) if partials is not None else renderer.count(_body(renderer, row))
            info = _Kept(row.user_type, row.user_id)
            kept.append(info)
            measure = _Measure(renderer, row)
            try:
                tr = truncate_prompt(row.parsed, gt_item_id=row.gt_item_id, user_id=row.user_id, measure=measure,
                                     line_costs=renderer.line_costs, options=opts, index=row.index,
                                     tokens_before=before, cited=cited_candidates(row.parsed, row.target))
            except BadRowError as exc:
                if cfg.on_bad_row == "error":
                    raise
                skipped.append(_skip_entry(exc, "truncate"))
                continue
            rendered = measure.rendered if measure.prompt is tr.prompt else renderer.render(tr.prompt, row.target)
            if len(kept) - 1 in verify_at:
                _verify(renderer, tr.prompt, row, rendered)
                verified += 1
            info.length, info.num_trained = rendered.length, rendered.num_trained
            row.parsed, row.prompt, row.target = None, "", ""
            out_rows.append(row)
            out_rendered.append(rendered)
            records.append(tr.record)
        sink.write(out_rendered, out_rows)

    pending: Optional[tuple[list[KitrecRow], Optional[list]]] = None
    for raw_block in _blocks(raw, WARM_BLOCK):
        n_loaded += len(raw_block)
        block: list[KitrecRow] = []
        for i, r in raw_block:
            try:
                block.append(normalize_row(r, i, require_target=True))
            except BadRowError as exc:
                if cfg.on_bad_row == "error":
                    raise
                skipped.append(_skip_entry(exc, "parse" if isinstance(r, UnreadableLine) else "validate"))
        del raw_block
        # Both Python phases overlap the Rust tokenizer: this block was parsed while the previous
        # block's chunks were being tokenized; the previous block is truncated and rendered while
        # this block's chunks are.
        if renderer.chunked:
            renderer.drain()
        partials = None
        if renderer.chunked:
            partials = renderer.prefetch([_body(renderer, r) for r in block])
            # a section's last line is merged with the blank line after it in the rendering, so
            # truncation's per-line costs would otherwise tokenize a few lines per row one by one
            renderer.prefetch_lines(ln.text for r in block for b in r.parsed.blocks
                                    if b.kind in CUTTABLE for ln in b.lines)
            for r in block:
                r.prompt = ""  # parsed.render() is the same text
        if pending is not None:
            finish_block(*pending)
        pending = (block, partials)
        if progress is not None:
            progress("prepare", n_loaded, total)
    if pending is not None:
        if renderer.chunked:
            renderer.drain()
        finish_block(*pending)
    seconds_rows = time.perf_counter() - t0
    if not kept:
        first = skipped[0]
        raise EmptyDatasetError(f"data.dataset (--dataset): none of the {n_loaded} rows of {cfg.dataset} is valid "
                                f"(first: {row_label(first['row'] - 1)}, user_id={first['user_id']!r}: {first['problem']})")

    train_idx, val_idx = stratified_split([k.user_type for k in kept], [k.user_id for k in kept],
                                          cfg.val_fraction, cfg.split_seed)
    in_val = np.zeros(len(kept), dtype=np.int8)
    in_val[val_idx] = 1
    was_written = np.fromiter((k.length >= 0 for k in kept), dtype=bool, count=len(kept))
    parts = sink.split(in_val[was_written], SPLITS)  # SPLITS[0] is train: 0, validation: 1
    splits = {name: ds if ds is not None else _empty_split(sink.schema) for name, (ds, _) in parts.items()}
    report = _report(cfg, tokenizer, n_loaded, kept, train_idx, val_idx, records, skipped, renderer, verified, opts)
    report["tokenization"]["chunks_tokenized"] = renderer.chunks_tokenized - tokenized_before
    # the cache only speeds up this call; the tokenizer lives on (through training), the cache need not
    renderer.clear()
    report["seconds"] = {"rows": round(seconds_rows, 3), "total": round(time.perf_counter() - t0, 3)}
    files = {name: (f, ds._fingerprint) for name, (ds, f) in parts.items() if ds is not None}
    return PreparedData(splits["train"], splits["validation"], report, files)


def _empty_split(schema):
    from datasets import Dataset, Features

    return Dataset.from_dict({n: [] for n in schema.names}, features=Features.from_arrow_schema(schema))


def _verify(renderer: ChatRenderer, prompt: str, row: KitrecRow, rendered: Rendered) -> None:
    whole = renderer.full_encode(renderer.body_text(prompt, row.target))
    if not np.array_equal(whole, rendered.input_ids):
        raise RenderError(f"{row_label(row.index)}, user_id={row.user_id!r}: chunked tokenization differs from "
                          f"whole-text tokenization ({len(rendered.input_ids)} vs {len(whole)} tokens)")


def _report(cfg, tokenizer, n_loaded, kept, train_idx, val_idx, records, skipped, renderer, verified,
            opts) -> dict:
    per_type: dict[str, dict] = defaultdict(lambda: {s: {"in": 0, "out": 0} for s in SPLITS})
    out_count = {s: 0 for s in SPLITS}
    lengths_after, trained = [], []
    for split, idxs in (("train", train_idx), ("validation", val_idx)):
        for j in idxs:
            k = kept[j]
            per_type[k.user_type][split]["in"] += 1
            if k.length >= 0:
                per_type[k.user_type][split]["out"] += 1
                out_count[split] += 1
                lengths_after.append(k.length)
                trained.append(k.num_trained)
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
            "valid": len(kept),
            "skipped": len(skipped),
            "train": {"in": len(train_idx), "out": out_count["train"]},
            "validation": {"in": len(val_idx), "out": out_count["validation"]},
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
            # rows whose trained target names negatives the prompt shows, and how many the cut removed
            "keep_cited_candidates": opts.keep_cited,
            "rows_citing_candidates": sum(r.cited_before > 0 for r in records),
            "cited_ids": sum(r.cited_before for r in records),
            "rows_cited_cut": sum(r.cited_cut > 0 for r in records),
            "cited_ids_cut": sum(r.cited_cut for r in records),
        },
        "skipped": skipped,
        "skipped_by_stage": dict(Counter(s["stage"] for s in skipped)),
        "tokens": {
            "max_length": cfg.max_length,
            "before": percentiles([r.tokens_before for r in records]),
            "after": percentiles(lengths_after),
            "trained": percentiles(trained),
        },
        "tokenization": {"chunked": renderer.chunked, "rows_verified_whole": verified},
    }


_EMPTY_MARKER = "EMPTY.json"
# The layout datasets' save_to_disk gives a one-shard split (so `datasets.load_from_disk` reads a
# prepared split), written without save_to_disk: that reads every row back through the memory map.
_DATA_FILE = "data-00000-of-00001.arrow"  # an Arrow IPC stream, as save_to_disk writes it


def _write_split(split: Any, source: Optional[tuple[str, str]], dest: Path) -> None:
    """Write ``split`` into the folder ``dest`` as save_to_disk would: one Arrow stream file (a copy of
    the file ``prepare`` mapped it from while ``split`` is unchanged: same fingerprint; any
    select/map/filter gives a new one; else its rows block by block) and the two small JSON files
    ``load_from_disk`` reads beside it (the same keys save_to_disk writes)."""
    import pyarrow as pa

    if source is not None and source[1] == split._fingerprint:
        shutil.copyfile(source[0], dest / _DATA_FILE)  # a kernel-side copy: no page of it enters this process
    else:
        with pa.OSFile(str(dest / _DATA_FILE), "wb") as sink, pa.ipc.new_stream(sink, split.data.schema) as writer:
            for table in split.with_format("arrow").iter(1024):
                writer.write_table(table)
    state = {"_data_files": [{"filename": _DATA_FILE}], "_fingerprint": split._fingerprint,
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
             "_split": None}
    info = dataclasses.asdict(split.info)
    atomic_write_text(dest / "state.json", json.dumps(state, indent=2, sort_keys=True))
    atomic_write_text(dest / "dataset_info.json", json.dumps({k: info[k] for k in sorted(info)}, indent=2))


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
            (tmp / name).mkdir()
            _write_split(split, prepared.files.get(name), tmp / name)
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
    from datasets import Dataset, load_from_disk

    p = Path(path)
    report = json.loads((p / "report.json").read_text()) if (p / "report.json").is_file() else {}

    def _load(d: Path):
        if (d / _EMPTY_MARKER).is_file():
            return None
        return load_from_disk(str(d))

    loaded = {name: _load(p / name) for name in ("train", "validation")}
    schema = next((d for d in loaded.values() if d is not None), None)
    for name, split in loaded.items():
        if split is None:
            columns = json.loads((p / name / _EMPTY_MARKER).read_text())["columns"]
            features = schema.features if schema is not None else None
            loaded[name] = Dataset.from_dict({c: [] for c in columns}, features=features)
    return PreparedData(loaded["train"], loaded["validation"], report)

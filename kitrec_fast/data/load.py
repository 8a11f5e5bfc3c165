"""Read raw KitREC rows as a list of dicts.

``dataset`` is one of:

* ``embedded:NAME`` -> the sample shipped in ``kitrec_fast/data/sample/NAME.jsonl.gz``;
* a local ``.jsonl`` / ``.json`` / ``.parquet`` file, optionally ``.gz``-compressed (a ``.json``
  file may hold a list of rows, an object mapping split names to lists, or JSON lines);
* anything else is a Hugging Face Hub dataset id, loaded with ``datasets.load_dataset``
  (``split`` picks the split; the KitREC val sets call theirs ``val``).

Local files are parsed directly rather than through ``datasets``: this skips the Arrow cache
under ``~/.cache/huggingface`` and keeps nested ``ground_truth``/``metadata`` values as they are.

Rows are numbered in messages by their 1-based position (``kitrec_fast.badrow.row_label``). In a
JSON Lines file that is the file line: a blank line inside the file is therefore an error (it
would shift every later row's number); blank lines at the end are ignored.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from kitrec_fast.badrow import SKIP_HINT, UnreadableLine, row_label
from kitrec_fast.errors import UserError

EMBEDDED_PREFIX = "embedded:"
SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
_OPTION = "data.dataset (--dataset)"
_LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz", ".parquet.gz")


class DatasetLoadError(UserError):
    """The dataset option names nothing readable; the message names the option and the path."""


def embedded_path(name: str) -> Path:
    path = SAMPLE_DIR / f"{name}.jsonl.gz"
    if not path.is_file():
        available = sorted(p.name[: -len(".jsonl.gz")] for p in SAMPLE_DIR.glob("*.jsonl.gz")) if SAMPLE_DIR.is_dir() else []
        raise DatasetLoadError(f"data.dataset (--dataset): no embedded sample {name!r} at {path}; "
                               f"available: {', '.join(available) or 'none'}")
    return path


def load_raw(dataset: str, split: str = "train") -> list[dict[str, Any]]:
    rows, _ = iter_raw(dataset, split)
    return list(rows)


def iter_raw(dataset: str, split: str = "train",
             skip_bad_lines: bool = False) -> tuple[Iterable[dict[str, Any] | UnreadableLine], int]:
    """``(rows, count)`` where JSON-lines files and Hub datasets are read one row at a time.

    With ``skip_bad_lines`` a JSON Lines line that cannot be decoded is yielded as an
    ``UnreadableLine`` in its place (for ``on_bad_row=skip``); without, it is a DatasetLoadError.

    Holding 12k raw KitREC rows as Python objects costs ~0.5 GB; streaming them lets the prepare
    step keep only the rows in flight. ``count`` is known up front (a quick line count for JSON
    lines), so progress and the spread of verified rows need no second pass over parsed rows.
    """
    local = check_dataset(dataset)
    if local is not None:
        return _iter_local(local, split, skip_bad_lines)
    from kitrec_fast.hub import hub_errors

    with hub_errors(dataset, "dataset", _OPTION):
        import datasets

        ds = datasets.load_dataset(dataset, split=split)  # memory-mapped Arrow: iterating reads row by row
    return iter(ds), len(ds)


def check_dataset(dataset: str) -> Path | None:
    """The local file ``dataset`` names, or None for a Hub id that can be loaded; raises what
    ``iter_raw`` would for a missing file or an unreachable Hub. Cheap, so a command calls it before
    its slow setup (a tokenizer, a model) instead of failing after it."""
    if dataset.startswith(EMBEDDED_PREFIX):
        return embedded_path(dataset[len(EMBEDDED_PREFIX):])
    path = Path(dataset).expanduser()
    if path.is_file():
        return path
    if dataset.lower().endswith(_LOCAL_SUFFIXES):
        raise DatasetLoadError(f"data.dataset (--dataset): file not found: {dataset}")
    from kitrec_fast.hub import require_hub

    require_hub(dataset, "dataset", _OPTION)
    return None


def _iter_local(path: Path, split: str, skip_bad_lines: bool) -> tuple[Iterable[dict[str, Any]], int]:
    if _is_jsonl(path):
        with _open_binary(path) as f:
            count = sum(1 for line in f if line.strip())
        return _iter_jsonl(path, skip_bad_lines), count
    rows = read_local(path, split, skip_bad_lines)
    return rows, len(rows)


def _is_jsonl(path: Path) -> bool:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return name.endswith(".jsonl")


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def read_local(path: Path, split: str = "train", skip_bad_lines: bool = False) -> list[dict[str, Any]]:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        with _open_binary(path) as f:
            return pq.read_table(io.BytesIO(f.read())).to_pylist()
    if name.endswith(".json"):
        with _open_binary(path) as f:
            data = f.read()
        try:
            obj = json.loads(data)
        except json.JSONDecodeError:
            obj = None  # not a single document: read it as JSON lines below
        if isinstance(obj, list):
            return obj
        if isinstance(obj, dict):
            if isinstance(obj.get(split), list):
                return obj[split]
            if isinstance(obj.get("data"), list):
                return obj["data"]
            raise DatasetLoadError(f"data.dataset (--dataset): {path} holds an object without a {split!r} list")
    return list(_iter_jsonl(path, skip_bad_lines))


def _iter_jsonl(path: Path, skip_bad_lines: bool = False) -> Iterator[dict[str, Any] | UnreadableLine]:
    # one line at a time: decoding the whole file first would hold the text twice more
    # (12k KitREC rows are ~300 MB of UTF-8, twice that as Python str)
    blank_at = None  # the first blank line of a run; an error only if a row follows it
    first_row = True
    with _open_binary(path) as f:
        for index, line in enumerate(f):
            if not line.strip():
                blank_at = index if blank_at is None else blank_at
                continue
            if blank_at is not None:
                raise DatasetLoadError(f"data.dataset (--dataset): {path} {row_label(blank_at)} is blank; a JSON "
                                       "Lines file holds one row per line (blank lines only at the end)")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                # exc.msg alone drops the position ("Invalid control character at"); its line is always 1 here
                problem = f"is not valid JSON: {exc.msg}: column {exc.colno} (char {exc.pos})"
            except UnicodeDecodeError as exc:
                problem = f"is not UTF-8 text ({exc.reason} at byte {exc.start})"
            else:
                first_row = False
                yield row
                continue
            if first_row and not (skip_bad_lines and _json_named(path)):
                # the very first row unreadable: most likely another format (CSV, a binary file), where
                # skipping bad rows would drop them all
                raise DatasetLoadError(f"data.dataset (--dataset): {path} {row_label(index)} {problem}; "
                                       f"{_format_hint(path)}")
            first_row = False
            if not skip_bad_lines:
                raise DatasetLoadError(f"data.dataset (--dataset): {path} {row_label(index)} {problem}; {SKIP_HINT}")
            yield UnreadableLine(f"the line {problem}")


def _json_named(path: Path) -> bool:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return name.endswith((".jsonl", ".json"))


def _format_hint(path: Path) -> str:
    hint = ("a dataset file is JSON Lines (.jsonl, one row object per line), JSON (.json) or Parquet (.parquet), "
            "each optionally .gz")
    if path.name.lower().endswith((".csv", ".csv.gz", ".tsv")):
        hint += ("; convert a CSV file first, e.g. "
                 "pandas.read_csv(...).to_json('rows.jsonl', orient='records', lines=True)")
    elif _json_named(path):
        hint += f"; if only some lines are bad, {SKIP_HINT}"
    return hint

"""JSONL files of rows (gzipped with a fixed header) and the shipped samples."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterable, Optional

from kitrec_fast.data.synth.rows import generate_rows
from kitrec_fast.data.synth.spec import SAMPLE_DIR, SAMPLE_SEED, SAMPLE_SPECS

def _jsonl_bytes(rows: Iterable[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write rows as UTF-8 JSON lines; a ``.gz`` suffix gzips them (with a fixed header, so
    equal rows give equal bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _jsonl_bytes(rows)
    if path.suffix == ".gz":
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                      compresslevel=9, mtime=0) as gz:
            gz.write(data)
    else:
        path.write_bytes(data)
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a plain or gzipped JSONL file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def sample_rows(name: str) -> list[dict]:
    """Rows of a shipped sample, by file name with or without ``.jsonl.gz``."""
    fname = name if name.endswith(".jsonl.gz") else f"{name}.jsonl.gz"
    return read_jsonl(SAMPLE_DIR / fname)


def regenerate_samples(out_dir: Optional[str | Path] = None) -> list[Path]:
    """Rewrite the shipped sample files (into ``out_dir`` if given) from ``SAMPLE_SPECS``."""
    out = Path(out_dir) if out_dir is not None else SAMPLE_DIR
    return [write_jsonl(out / fname, generate_rows(seed=SAMPLE_SEED, **kw)) for fname, kw in SAMPLE_SPECS]

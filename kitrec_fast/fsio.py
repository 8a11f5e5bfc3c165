"""Files: atomic writes (a reader, or a rerun after a kill, sees the old file or the new one, never
half) and the project's cache directory."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | os.PathLike, text: str, mode: int = 0o644) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600; run artifacts are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


def make_shareable(directory: str | os.PathLike) -> None:
    """Every file under ``directory`` readable by group and others: safetensors and some tokenizer
    files are written 0600 (private temp files renamed into place), while a run's adapter or an
    exported model is meant to be served by other users' processes, like every other run file."""
    for path in Path(directory).rglob("*"):
        if path.is_file():
            path.chmod(path.stat().st_mode | 0o644)


def cache_root() -> Path:
    """Where built artifacts are cached (offline tokenizer, tiny model): $KITREC_FAST_CACHE, else
    $XDG_CACHE_HOME/kitrec_fast, else ~/.cache/kitrec_fast."""
    root = os.environ.get("KITREC_FAST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "kitrec_fast")
    return Path(root)

"""Files: atomic, synced writes (a reader, or a rerun after a kill or a power loss, sees the old
file or the new one, never half) and the project's cache directory."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from kitrec_fast.errors import UserError


class OutputNotWritable(UserError):
    """An output path this user cannot create or write."""


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: str | os.PathLike, option: str, *, file: bool = False, replaced_whole: bool = False) -> None:
    """Refuse an output that cannot be written, before any work is done; creates nothing, so a dry
    run can call it too.

    ``path`` is a folder the command writes into (made with its parents if missing), or with ``file``
    a file (written next to itself and renamed into place, so its folder must be writable). A folder
    ``replaced_whole`` is built next to itself and swapped in: its parent must be writable as well.
    Root passes permission checks, but not a read-only file system or a file where a folder should be.
    """
    target = Path(path).expanduser().absolute()
    if target.is_dir() and file:
        raise OutputNotWritable(f"{option}: {path} is a folder; give a file name")
    if target.exists() and not target.is_dir() and not file:
        raise OutputNotWritable(f"{option}: {path} exists and is not a folder")
    places = [_nearest_existing(target.parent if file or replaced_whole else target)]
    if not file and target.is_dir():
        places.append(target)
    for place in places:
        if not place.is_dir():
            raise OutputNotWritable(f"{option}: cannot create {path}: {place} is a file, not a folder")
        if not os.access(place, os.W_OK | os.X_OK):
            why = "is on a read-only file system" if _read_only(place) else "is not writable by this user"
            raise OutputNotWritable(f"{option}: cannot write {path}: {place} {why}")


@contextlib.contextmanager
def refused_writes(path: str | os.PathLike, option: str) -> Iterator[None]:
    """A write the file system refuses although :func:`check_writable` passed (root on sysfs, a
    security policy, a network mount squashing root) is one line like a read-only folder, not a
    traceback. A full disk is not caught here: its own error says what to free."""
    try:
        yield
    except PermissionError as exc:
        raise OutputNotWritable(f"{option}: cannot write {path}: {exc.filename or path}: "
                                f"{exc.strerror or exc}") from None


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in ``path`` durable: without this a power loss can undo a
    rename whose file data is already on disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


def build_dir_atomically(path: str | os.PathLike, build: Callable[[Path], None], marker: str) -> Path:
    """Run ``build`` on a folder beside ``path`` and rename it into place: grid jobs and parallel test
    workers start at once on a fresh cache, and none may read a folder still being written. When
    another process got there first its copy is kept (the builds are deterministic); a folder already
    at ``path`` without ``marker`` in it is an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    try:
        os.rename(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (path / marker).is_file():
            raise
    return path


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

"""One writer per folder: a run directory (``train``), an output folder (``eval generate``), a
grid's output folder (``grid``).

The lock is an ``flock`` on a file in the folder: the kernel drops it when its holder dies, so a
SIGKILL, an OOM kill or a crash never leaves a stale lock. The file also holds who holds it (pid,
host, start time), for the message a second writer gets, and the holder touches it every
``HEARTBEAT_S`` seconds: its mtime is when the holder was last seen alive, which tells a later
start when a killed attempt died. The file is removed when the holder is done.

Shared file systems (a grid's output folder on NFS, Lustre, BeeGFS, ... seen from several nodes):
``flock`` reaches across nodes on some (NFSv4, CephFS) and not on others (NFS mounted
``local_lock=flock``, Lustre ``localflock``, BeeGFS by default), and a few refuse it (ENOLCK). So
the flock alone is not trusted across hosts: a record written by another host whose heartbeat is
fresh (younger than ``STALE_S``) counts as held even when the flock was granted, and where flock
is refused the record alone decides (on this host: whether its pid is alive). A holder killed with
its node thus blocks the folder for up to ``STALE_S`` (and, where NFS does carry the flock, until
the server drops the dead client's lock, ~90 s): ``$KITREC_FAST_LOCK_WAIT_S`` makes a start wait
that long for the folder instead of failing at once; the grid sets it for its jobs' retries. Each
folder has its own lock file, so a grid holding its output folder does not block the run
directories and evaluation folders of its jobs inside it.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from kitrec_fast.errors import UserError

HEARTBEAT_S = 20.0
STALE_S = 120.0  # six missed heartbeats; assumes the nodes' clocks agree to well within this
WAIT_ENV = "KITREC_FAST_LOCK_WAIT_S"
_NO_FLOCK = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


class FolderInUse(UserError):
    """Another process writes the folder."""


@dataclass
class Held:
    path: Path
    previous: dict | None  # the record a holder that died without cleaning up left (its last_seen: heartbeat)
    made: bool = False  # hold_made created the folder


def describe(record: dict | None) -> str:
    if not record or "pid" not in record:
        return "holder not recorded yet: it is starting"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("started", 0)))
    return f"pid {record['pid']} on {record.get('host', '?')}, started {started}"


def read_record(path: Path) -> dict | None:
    """The holder record in a lock file, with ``last_seen`` (its mtime: the last heartbeat)."""
    try:
        record = json.loads(Path(path).read_text() or "null")
        if isinstance(record, dict):
            record["last_seen"] = Path(path).stat().st_mtime
            return record
    except (OSError, ValueError):
        pass
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _held_by_record(record: dict | None, flock_works: bool) -> bool:
    """Whether a record says the folder is held although this host's flock was granted (or is unavailable)."""
    if not record or "pid" not in record:
        return False
    if record.get("host") != socket.gethostname():
        return time.time() - record["last_seen"] < STALE_S
    return not flock_works and record["pid"] != os.getpid() and _pid_alive(int(record["pid"]))


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _try_flock(fh) -> bool | None:
    """True: locked; False: another process holds it; None: this file system has no flock."""
    import fcntl

    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in _NO_FLOCK:
            return None
        raise


def _acquire(path: Path):
    """``(file, previous record)`` once held, or ``(None, holder record)``."""
    for _ in range(5):
        fh = open(path, "a+")
        got = _try_flock(fh)
        if got is False:
            fh.close()
            return None, read_record(path)
        if got and not _same_file(fh.fileno(), path):
            fh.close()  # locked a file the previous holder had just removed: take the path again
            continue
        record = read_record(path)
        if _held_by_record(record, flock_works=got is True):
            fh.close()
            return None, record
        return fh, record
    return None, None


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            os.utime(path)
        except OSError:
            return  # the folder went away (a failed run that removed its own directory)


@contextmanager
def hold(folder: Path, name: str, option: str, what: str) -> Iterator[Held]:
    """Hold ``folder`` (which must exist) through its lock file ``name``; a folder another process
    holds is a :class:`FolderInUse` naming the holder (after waiting ``$KITREC_FAST_LOCK_WAIT_S``)."""
    path = Path(folder) / name
    try:
        wait = float(os.environ.get(WAIT_ENV) or 0)
    except ValueError:
        wait = 0.0
    deadline = time.monotonic() + wait
    while True:
        fh, record = _acquire(path)
        if fh is not None or time.monotonic() >= deadline:
            break
        time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
    if fh is None:
        raise FolderInUse(f"{option} {folder} is in use by {what} ({describe(record)}); wait for it to end, "
                          f"or use another {option}")
    previous = record if record and record.get("pid") is not None else None
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}) + "\n")
    fh.flush()
    os.chmod(path, 0o644)  # every file a run writes is readable by others
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(path, stop), daemon=True, name="dirlock-heartbeat")
    beat.start()
    try:
        yield Held(path, previous)
    finally:
        stop.set()
        if _same_file(fh.fileno(), path):
            path.unlink(missing_ok=True)  # still locked: nobody can have taken the path in between
        fh.close()


@contextmanager
def hold_made(folder: Path, name: str, option: str, what: str) -> Iterator[Held]:
    """:func:`hold`, making ``folder`` (and missing parents) first; those it made are removed again
    when they are empty at the end (a command refused before writing leaves no folder behind)."""
    made, missing = [], Path(folder)
    while not missing.exists():
        made.append(missing)
        missing = missing.parent
    Path(folder).mkdir(parents=True, exist_ok=True)
    try:
        with hold(folder, name, option, what) as held:
            held.made = bool(made)
            yield held
    finally:
        for path in made:  # innermost first; one with files in it stays
            try:
                path.rmdir()
            except OSError:
                break

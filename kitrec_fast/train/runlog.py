"""A training run's console, kept in its run directory (``train.log``), and safe from a closed pipe.

Under ``kitrec-fast train ... | tee log`` the terminal's Ctrl-C reaches ``tee`` too: it exits, and
every later write to stdout or stderr fails with EPIPE. Raised inside the Ctrl-C handler or a
Trainer callback, that error ended the run before its checkpoint was written. While a run is
captured here, a write to a closed stream is dropped (the stream's descriptor is pointed at
``/dev/null``, so no later write or flush by anyone raises) and the run goes on.

``train.log`` gets what stdout and stderr showed, as plain text: colours dropped, and a live
progress bar's redraws (carriage returns, cursor-up, erase-line: a terminal only) replayed on the
last lines of the file rather than appended, so it holds what the screen held. It is appended to
across attempts, each starting with a header line. Lines written before the run directory exists
(config table, data, model) are kept in memory and written when it is; a run refused before that
leaves no log, as it leaves no directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
import threading
from pathlib import Path

# CSI (colours, cursor moves, erase), OSC (hyperlinks, titles), other two-byte escapes, CR, LF, text.
_TOKENS = re.compile(r"\x1b\[([0-9;?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b.|(\r)|(\n)|([^\x1b\r\n]+)")
_TAIL = 40  # lines a redraw may still reach (a progress display is a few lines high)
_BUFFER_LIMIT = 4 * 2**20


class RunLog:
    """The plain-text copy of the console (see the module doc); thread-safe, writes never raise."""

    def __init__(self):
        self._lock = threading.RLock()
        self._busy = False
        self._pending: list[str] = []  # written from a signal handler while a write was under way
        self._early: list[str] = []
        self._early_size = 0
        self._fh = None
        self._committed = 0  # bytes of the file that no redraw can change any more
        self._lines = [""]
        self._row = self._col = 0

    def attach(self, path: Path, header: str) -> None:
        """Start writing ``path`` (appended), with ``header`` and what was shown so far."""
        with self._lock:
            if self._fh is not None:
                return
            try:
                new = not Path(path).exists()
                open(path, "ab").close()
                self._fh = open(path, "r+b")  # not "a": a redraw rewrites the last lines in place
                if new:
                    os.chmod(path, 0o644)
            except OSError:
                return  # the log is a copy: a run does not stop for it
            self._fh.seek(0, os.SEEK_END)
            self._committed = self._fh.tell()
            early, self._early = self._early, []
            self._lines, self._row, self._col = [""], 0, 0
            self._feed(header.rstrip("\n") + "\n" + "".join(early))

    def write(self, text: str) -> None:
        if not text:
            return
        with self._lock:
            if self._busy:  # a signal handler interrupted a write of this thread: after it
                self._pending.append(text)
                return
            self._busy = True
            try:
                while True:
                    if self._fh is not None:
                        self._feed(text)
                    elif self._early_size < _BUFFER_LIMIT:
                        self._early.append(text)
                        self._early_size += len(text)
                    if not self._pending:
                        break
                    text = self._pending.pop(0)
            finally:
                self._busy = False

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                with contextlib.suppress(OSError):
                    self._fh.close()
                self._fh = None

    # -- a few lines of terminal: what the screen shows ------------------------------------------

    def _feed(self, text: str) -> None:
        for m in _TOKENS.finditer(text):
            params, final, cr, lf, chunk = m.group(1), m.group(2), m.group(3), m.group(4), m.group(5)
            if chunk:
                line = self._lines[self._row].ljust(self._col)
                self._lines[self._row] = line[:self._col] + chunk + line[self._col + len(chunk):]
                self._col += len(chunk)
            elif lf:
                self._row += 1
                self._col = 0
                if self._row == len(self._lines):
                    self._lines.append("")
            elif cr:
                self._col = 0
            elif final:
                self._control(params or "", final)
        self._flush()

    def _control(self, params: str, final: str) -> None:
        n = int(params) if params.isdigit() else None
        if final == "A":  # cursor up (a redraw): as far as the lines still held
            self._row = max(0, self._row - (n or 1))
        elif final == "B":
            self._row += n or 1
            self._lines.extend("" for _ in range(self._row + 1 - len(self._lines)))
        elif final == "G":
            self._col = max(0, (n or 1) - 1)
        elif final == "K":
            line = self._lines[self._row]
            self._lines[self._row] = "" if n == 2 else (line[:self._col] if not n else " " * self._col + line[self._col:])

    def _flush(self) -> None:
        try:
            while self._row > _TAIL:  # lines scrolled beyond any redraw: final
                line = (self._lines.pop(0).rstrip() + "\n").encode("utf-8", "replace")
                self._fh.seek(self._committed)
                self._fh.write(line)
                self._committed += len(line)
                self._row -= 1
            tail = "\n".join(line.rstrip() for line in self._lines).encode("utf-8", "replace")
            self._fh.seek(self._committed)
            self._fh.write(tail)
            self._fh.truncate()
            self._fh.flush()
        except OSError:
            pass  # a full disk stops the run at its next save, with its own message


class _Guarded:
    """stdout or stderr: every write also goes to the run log; a write to a closed pipe is dropped."""

    def __init__(self, stream, log: RunLog):
        self._stream, self._log = stream, log

    def write(self, text: str) -> int:
        self._log.write(text)
        try:
            self._stream.write(text)
        except (OSError, ValueError) as exc:
            self._closed(exc)
        return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError) as exc:
            self._closed(exc)

    def _closed(self, exc: BaseException) -> None:
        if isinstance(exc, OSError) and exc.errno not in (errno.EPIPE, errno.EINVAL, errno.EBADF):
            return  # e.g. a full disk under a redirect: the write is lost, the run goes on
        # The reader is gone: what is buffered and what comes later go to /dev/null, so that no
        # later write or flush (here, in a library holding this stream, at exit) raises.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def isatty(self) -> bool:
        try:
            return self._stream.isatty()
        except (OSError, ValueError):
            return False

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def captured():
    """stdout and stderr through a :class:`RunLog` (attached to a file once the run directory exists)."""
    log = RunLog()
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Guarded(out, log), _Guarded(err, log)
    try:
        yield log
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
        sys.stdout, sys.stderr = out, err
        log.close()

"""The one Ray task of a grid: run a job stage's commands, each in a fresh process, on the node Ray picked."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from kitrec_fast.fsio import atomic_write_json

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: the kernel kills it when the Ray worker dies, so a killed or
    preempted worker never leaves an orphan writing into a run directory its retry resumes."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_commands(commands: list[list[str]], log_path: str, proc_path: str, env: dict[str, str]) -> dict:
    """Run ``commands`` (Python arguments) one after the other; stop at the first that fails.

    Returns ``{"rc", "seconds", "node"}``; ``rc`` < 0 means the process was killed by a signal.
    ``proc_path`` tells the grid (and a person) which node and process ids run the stage."""
    log = Path(log_path)
    log.parent.mkdir(parents=True, exist_ok=True)
    node = socket.gethostname()
    t0 = time.time()
    rc = 0
    for args in commands:
        cmd = [sys.executable, *args]  # this node's interpreter: nodes may install Python elsewhere
        with log.open("ab") as fh:
            fh.write(("$ " + " ".join(cmd) + "\n").encode())
            fh.flush()
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **env}, preexec_fn=_die_with_parent)
        atomic_write_json(proc_path, {"node": node, "worker_pid": os.getpid(), "pid": proc.pid,
                                      "started": t0, "command": cmd})
        rc = proc.wait()
        if rc != 0:
            break
    return {"rc": rc, "seconds": round(time.time() - t0, 1), "node": node}


def probe_storage(marker: str, expected: str, reply: str) -> dict:
    """On one node: read the grid's marker under the output folder and write a reply next to it."""
    node = socket.gethostname()
    path = Path(marker)
    seen = path.read_text() if path.is_file() else None
    wrote = True
    try:
        Path(reply).write_text(node)
    except OSError:
        wrote = False
    return {"node": node, "ok": seen == expected and wrote}

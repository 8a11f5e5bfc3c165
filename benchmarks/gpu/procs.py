"""Stopping a step's processes so that none outlives it (a cut 14B worker would keep the GPU).

Every step of ``gpu_phases.py`` starts in its own process group, and everything it starts (the
harness, its workers, their compile helpers) stays in that group, so one signal to the group reaches
them all. The group is then waited for until it is empty: a process that ignored SIGTERM gets
SIGKILL, and the step ends only when nothing of it is left.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from /proc (Linux)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # ended while we looked
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after the last ')'
        fields = text.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(stat.parent.name))
    return pids


def stop_group(pgid: int, grace_s: float = 5.0, wait_s: float = 15.0) -> list[int]:
    """SIGTERM to the group, SIGKILL to what is left after ``grace_s``; wait until the group is
    empty (at most ``wait_s`` more). Returns the pids still alive after that (normally none)."""
    for sig, patience in ((signal.SIGTERM, grace_s), (signal.SIGKILL, wait_s)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return []
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if not group_members(pgid):
                return []
            time.sleep(0.1)
    return group_members(pgid)


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (children first), from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(proc, wait: bool = True) -> None:
    """SIGKILL a child process and everything it started (they share our process group, so the
    group cannot be signalled without signalling ourselves), then reap the child (``wait``)."""
    for pid in [*descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if wait:
        proc.wait()

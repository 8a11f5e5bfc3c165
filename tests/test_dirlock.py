"""One writer per folder (kitrec_fast/dirlock.py): real locks between real processes, no training."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from kitrec_fast.dirlock import STALE_S, FolderInUse, hold

HOLD = """
import sys, time
from kitrec_fast.dirlock import hold
with hold(__import__('pathlib').Path(sys.argv[1]), sys.argv[2], '--output-dir', 'another training run'):
    print('held', flush=True)
    time.sleep(600)
"""


def _holder(folder: Path, name: str = ".train.lock") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), name], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_with_the_first_named_and_a_killed_one_leaves_no_lock(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(FolderInUse) as info:
            with hold(tmp_path, ".train.lock", "--output-dir", "another training run"):
                pass
        msg = str(info.value)
        assert msg.startswith(f"--output-dir {tmp_path} is in use by another training run (pid {proc.pid} on "
                              f"{socket.gethostname()}, started 20"), msg
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # SIGKILL: no cleanup ran, the file stays, but the lock died with its holder; the dead holder's
    # record (with its last heartbeat) is handed to the next one
    assert (tmp_path / ".train.lock").is_file()
    with hold(tmp_path, ".train.lock", "--output-dir", "another training run") as held:
        assert held.previous["pid"] == proc.pid and held.previous["last_seen"] <= time.time()
        assert json.loads((tmp_path / ".train.lock").read_text())["pid"] == os.getpid()
        assert (tmp_path / ".train.lock").stat().st_mode & 0o777 == 0o644
    assert not (tmp_path / ".train.lock").exists()  # removed by a holder that ends normally


def test_a_fresh_record_of_another_host_holds_where_flock_does_not_reach(tmp_path):
    """On a shared file system whose flock is per node, the other node's holder is seen by its
    record and heartbeat: fresh, the folder is held; stale (its node died), it is taken over."""
    lock = tmp_path / ".grid.lock"
    lock.write_text(json.dumps({"pid": 4242, "host": "other-node", "started": time.time() - 30}))
    with pytest.raises(FolderInUse, match=r"another grid \(pid 4242 on other-node, started "):
        with hold(tmp_path, ".grid.lock", "--output", "another grid"):
            pass
    old = time.time() - STALE_S - 5
    os.utime(lock, (old, old))
    with hold(tmp_path, ".grid.lock", "--output", "another grid") as held:
        assert held.previous["host"] == "other-node"


def test_a_grids_lock_does_not_block_its_jobs_locks(tmp_path):
    run_dir, eval_dir = tmp_path / "runs" / "job1", tmp_path / "eval" / "job1"
    run_dir.mkdir(parents=True)
    eval_dir.mkdir(parents=True)
    proc = _holder(tmp_path, ".grid.lock")  # the grid command, in its own process
    try:
        with hold(run_dir, ".train.lock", "--output-dir", "another training run"), \
                hold(eval_dir, ".generate.lock", "--output", "another `eval generate`"):
            pass
    finally:
        proc.kill()
        proc.wait()

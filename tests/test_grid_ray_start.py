"""The grid joins a Ray cluster started the usual way, ``ray start --head``, with token authentication.

Ray (>= 2.52) turns token authentication on for ``ray start --head`` whenever a token exists on the
machine (~/.ray/auth_token, written by any earlier local ``ray.init``). The head here runs in its own
process (``--block``) with a temporary HOME holding a fresh token, and is stopped by its process id:
``ray stop`` would stop every Ray instance on the machine. The grid runs with the same HOME and
without RAY_AUTH_MODE, as a user's shell has it.
"""

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

pytest.importorskip("ray")

RAY = str(Path(sys.executable).with_name("ray"))
JOB = "singleft_music_seta-peft"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _user_env(home: Path) -> dict:
    """A user's shell: no Ray settings, HOME holding the token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "HOME": str(home)}


@pytest.fixture(scope="module")
def ray_start_head(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    env = _user_env(home)
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=120)
    assert (home / ".ray" / "auth_token").is_file()
    port = _free_port()
    # a short private temp dir (Ray's socket paths must stay under ~100 characters) and free ports
    # for everything with a fixed default, so other clusters on the machine are not disturbed
    temp_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"kr-{os.getpid()}-{port}"
    log = home / "head.log"
    cmd = [RAY, "start", "--head", "--block", "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
           "--ray-client-server-port", str(_free_port()), "--dashboard-agent-listen-port", str(_free_port()),
           "--object-store-memory", str(256 * 2**20), "--temp-dir", str(temp_dir), "--disable-usage-stats"]
    with open(log, "w") as fh:
        head = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            assert head.poll() is None, f"ray start ended:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, f"ray start never listened on {port}:\n{log.read_text()[-3000:]}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        yield {"address": f"127.0.0.1:{port}", "home": home, "log": log}
    finally:
        head.send_signal(signal.SIGTERM)  # ray start --block stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # its own session: only what this fixture started
            head.wait()


@pytest.mark.slow
def test_grid_joins_a_ray_start_head_that_requires_its_token(ray_start_head, tmp_path):
    # the head really runs with token authentication (a driver without the token fails to join)
    assert "Token authentication is enabled" in ray_start_head["log"].read_text()
    out = tmp_path / "grid"
    args = ["singleft_music", "--sets", "A", "--backends", "peft", "--smoke", "--address", ray_start_head["address"],
            "--output", str(out), "data.limit=8", "data.max_length=2048", "data.max_candidates=10",
            "data.min_candidates=5", "train.per_device_batch_size=1", "train.max_steps=2",
            "--eval-limit-per-type", "1", "--eval-max-new-tokens", "8"]
    t0 = time.time()
    result = subprocess.run([sys.executable, "-m", "kitrec_fast", "grid", *args], capture_output=True, text=True,
                            env=_user_env(ray_start_head["home"]), timeout=600)
    seconds = time.time() - t0
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    state = json.loads((out / "grid_state.json").read_text())
    assert state["jobs"][JOB]["state"] == "done", state["jobs"][JOB]
    print(f"grid of 1 smoke job on a ray start head: {seconds:.0f} s")

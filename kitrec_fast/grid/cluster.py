"""Starting or joining Ray, and the checks a grid makes before its first job."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from pathlib import Path

from kitrec_fast.grid.spec import GridError

CONNECT_TIMEOUT_S = 30.0


def _probe_tcp(address: str, timeout: float) -> None:
    """A GCS (host:port) or Ray client (ray://host:port) address must accept a connection."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # 'auto' and other forms: left to ray.init, still bounded by the timeout below
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as exc:
        raise GridError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); "
                        "check the head node's address and port (ray status on the head prints it)") from None


def check_address(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> None:
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        _probe_tcp(address, timeout)


_AUTH_MODE = "RAY_AUTH_MODE"
TOKEN_HINT = ("if the cluster uses token authentication (`ray start` turns it on when the head has a token, "
              "~/.ray/auth_token), make its token known here: copy it (`ray get-auth-token` on the head prints it) "
              "to ~/.ray/auth_token, or set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH")


def use_token_if_available() -> bool:
    """Send this machine's Ray token when joining a cluster by address, as ``ray start`` and
    ``ray.init(address="auto")`` do; True when token authentication is on for this process.

    Since Ray 2.52 a head started by ``ray start`` requires a token whenever one exists on it
    (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, which any earlier local ``ray.init``
    wrote), but a driver given an explicit address sends its token only under RAY_AUTH_MODE=token,
    and otherwise fails after ~30 s with a bare "Failed to connect". A token sent to a cluster without
    authentication is ignored, so sending it is always safe. An explicit RAY_AUTH_MODE is respected.
    """
    mode = os.environ.get(_AUTH_MODE)
    if mode is not None:
        return mode.lower() == "token"
    try:
        from ray._private.authentication import authentication_token_setup as setup
    except ImportError:  # a Ray without token authentication
        return False
    # Ray's own switch (environment variable + its cached config); quiet: its notice would name a
    # cluster this process has not joined yet
    log = logging.getLogger(setup.__name__)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        log.setLevel(level)


def connect(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Join the cluster at ``address`` (or RAY_ADDRESS), else start a local one on this machine.

    Returns True when a cluster was joined (nodes other than this one may run jobs)."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    # job output goes to per-stage log files; Ray's own notices would break up the live table
    kwargs = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address is None:
        kwargs["include_dashboard"] = False
    if address is None:
        # "local": a cluster of our own, as the README promises; a bare ray.init() would instead join
        # whatever cluster `ray start` last left on this machine, unchecked (no shared-output probe).
        ray.init(address="local", **kwargs)
        return False
    _probe_tcp(address, timeout)
    has_token = use_token_if_available()
    done: dict = {}

    def _init():
        try:
            ray.init(address=address, **kwargs)
            done["ok"] = True
        except Exception as exc:  # reported below; ray.init raises many types
            done["error"] = exc

    thread = threading.Thread(target=_init, daemon=True)
    thread.start()
    thread.join(timeout)
    if "ok" not in done:
        why = done.get("error") or f"no answer within {timeout:.0f} s"
        hint = "" if has_token else f"; {TOKEN_HINT}"
        raise GridError(f"--address {address}: cannot join the Ray cluster ({why}){hint}")
    return True


def check_gpus(smoke: bool, address: str | None) -> None:
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    if not smoke and gpus < 1:
        where = f"the Ray cluster at {address}" if address else "this machine's Ray cluster"
        raise GridError(f"{where} has no GPUs, and a grid without --smoke trains Qwen3-14B on one GPU per job. "
                        "Add GPU nodes, or run the CPU smoke grid: kitrec-fast grid --smoke")


def check_shared_output(output: Path) -> None:
    """Every node must see the output folder: run directories, checkpoints and predictions live
    there, and a retried job may resume on another node. One probe task per node reads a marker
    written here and writes one back."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from kitrec_fast.grid.worker import probe_storage

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    probe_dir = Path(output) / ".probe"
    probe_dir.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    marker = probe_dir / "marker"
    marker.write_text(token)
    task = ray.remote(probe_storage)
    refs = {}
    for n in nodes:
        reply = probe_dir / f"reply-{n['NodeID'][:12]}"
        refs[n["NodeManagerAddress"]] = (reply, task.options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(str(marker), token, str(reply)))
    bad = []
    for ip, (reply, ref) in refs.items():
        result = ray.get(ref, timeout=120)
        if not result["ok"] or not reply.is_file():
            bad.append(f"{result['node']} ({ip})")
    for p in probe_dir.iterdir():
        p.unlink(missing_ok=True)
    probe_dir.rmdir()
    if bad:
        raise GridError(f"--output {output}: not shared with node(s) {', '.join(bad)}. On a cluster the output "
                        "folder must be on storage every node mounts at the same path (NFS, a cluster file "
                        "system, a shared volume): run directories, checkpoints and predictions live there.")

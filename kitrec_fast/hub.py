"""Loading a dataset, tokenizer or model by Hugging Face Hub id when the Hub cannot be reached.

Every loader that takes a Hub id calls :func:`require_hub` before loading and runs the load inside
:func:`hub_errors`. When the Hub is unreachable (``HF_HUB_OFFLINE=1``, or its endpoint does not
answer) and nothing is cached for the id, the command stops at once with one line naming the id,
the option, and the two ways out, exit 2. Without the check first, ``huggingface_hub`` retries a
refused connection five times with backoff (~25 s) before ``datasets`` raises a bare
``ConnectionError`` whose traceback says none of that.

A cached id is left to the libraries (they fall back to the cache themselves); if that still fails
for lack of the Hub, :func:`hub_errors` turns the failure into the same line.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Iterator, Optional

from kitrec_fast.errors import UserError

# seconds the one reachability probe may take; a reachable Hub answers a HEAD well within it
PROBE_TIMEOUT = 5.0


class HubUnreachableError(UserError):
    """A Hub id was asked for while the Hub is unreachable and nothing is cached for it."""


def is_hub_id(name: str) -> bool:
    """True for what the loaders would send to the Hub: not an existing local path, and not one of
    the project's own sources (``embedded:``, ``offline:``, ``testkit:``; a Hub id has no colon)."""
    return bool(name) and ":" not in name and not Path(name).expanduser().exists()


def require_hub(name: str, kind: str, option: str) -> None:
    """Raise HubUnreachableError before loading ``name`` (a ``dataset`` / ``tokenizer`` / ``model``
    Hub id) when the Hub is unreachable and nothing is cached for it."""
    if not is_hub_id(name):
        return
    reason = unreachable_reason(kind)
    if reason is not None and not _cached(name, kind):
        raise HubUnreachableError(message(name, kind, option, reason))


@contextlib.contextmanager
def hub_errors(name: str, kind: str, option: str) -> Iterator[None]:
    """Turn a load that failed for lack of the Hub (cache incomplete, or the network went away
    after :func:`require_hub`) into the same one-line error."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        cause = hub_cause(exc)
        if cause is None:
            raise
        raise HubUnreachableError(message(name, kind, option, _describe(cause))) from exc


def message(name: str, kind: str, option: str, reason: str) -> str:
    repo_type = " --repo-type dataset" if kind == "dataset" else ""
    local = "a local file or folder" if kind == "dataset" else "a local folder"
    return (f"{option}: cannot reach the Hugging Face Hub for {kind} {name!r} ({reason}) and nothing is cached "
            f"for it; pass {local} instead, or download it once where the Hub is reachable "
            f"(hf download {name}{repo_type} --local-dir DIR) and pass DIR")


def unreachable_reason(kind: str) -> Optional[str]:
    """Why the Hub cannot be used for ``kind`` (offline mode, or its endpoint not answering), or None."""
    if kind == "dataset" and _env_true("HF_DATASETS_OFFLINE"):
        return "HF_DATASETS_OFFLINE=1 is set"
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE=1 is set"
    if kind == "dataset" and os.environ.get("HF_DATASETS_OFFLINE") is not None:
        return None  # datasets reads HF_DATASETS_OFFLINE=0 as online even under HF_HUB_OFFLINE: probe below
    return _probe(constants.ENDPOINT)


@functools.lru_cache(maxsize=None)
def _probe(endpoint: str) -> Optional[str]:
    # once per process: a training run asks for its tokenizer, dataset and model in turn
    import httpx
    from huggingface_hub import get_session

    try:
        get_session().head(endpoint, timeout=PROBE_TIMEOUT, follow_redirects=False)
    except httpx.HTTPError as exc:
        return f"{endpoint} did not answer: {type(exc).__name__}"
    return None  # any HTTP answer, even an error status, means the Hub is there


def _env_true(var: str) -> bool:
    return os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _cached(name: str, kind: str) -> bool:
    """Whether the libraries have anything of ``name`` to fall back on: a snapshot in the Hub
    cache, or (for a dataset) an Arrow copy from an earlier ``load_dataset``."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    repo_type = "dataset" if kind == "dataset" else "model"
    snapshots = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=name, repo_type=repo_type) / "snapshots"
    if snapshots.is_dir() and any(snapshots.iterdir()):
        return True
    if kind != "dataset":
        return False
    # where datasets keeps its Arrow copies (datasets.config.HF_DATASETS_CACHE, without importing
    # datasets: seconds), each in a folder named namespace___name (datasets/builder.py)
    arrow = Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets").expanduser()
    wanted = name.replace("/", "___").lower()
    return arrow.is_dir() and any(p.name.lower() == wanted for p in arrow.iterdir())


def hub_cause(exc: BaseException) -> Optional[BaseException]:
    """The exception in ``exc``'s chain that says the Hub could not be reached, or None."""
    import httpx
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (OfflineModeIsEnabled, LocalEntryNotFoundError, httpx.TransportError)):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def unreached_line(cause: BaseException) -> str:
    """The line for a Hub failure no loader named: what was asked for is in the library's own text."""
    detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return (f"cannot reach the Hugging Face Hub ({_describe(cause)}; {detail}) and nothing is cached for it; pass a "
            "local file or folder instead, or download it once where the Hub is reachable "
            "(hf download REPO_ID --local-dir DIR) and pass DIR")


def _describe(cause: BaseException) -> str:
    from huggingface_hub import constants
    from huggingface_hub.errors import OfflineModeIsEnabled

    # transformers reports offline mode as a cache miss (LocalEntryNotFoundError): say the mode
    if isinstance(cause, OfflineModeIsEnabled) or constants.is_offline_mode():
        return "HF_HUB_OFFLINE=1 is set"

    return f"{constants.ENDPOINT} did not answer: {type(cause).__name__}"

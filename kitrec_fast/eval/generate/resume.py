"""Resuming into an output directory: rows already written, one writer at a time, same settings."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from kitrec_fast.eval.generate.options import CONFIG_FILE, PREDICTIONS_FILE, GenerateError

LOCK_FILE = ".generate.lock"
# Settings that change what a row's generation is; a rerun into the same directory must match them.
FINGERPRINT_KEYS = ("model", "adapter", "backend", "engine", "dataset", "split", "max_new_tokens",
                    "max_candidates", "max_prompt_tokens", "candidate_seed", "tokenizer", "base")


def read_done(path: Path, notice=None) -> set[int]:
    """Row ids already in ``path``; a torn last line (killed mid-write) is cut off the file, and
    ``notice`` (if given) is called with a line saying so.

    Only the last line may be torn: writes are appended and fsync'ed batch by batch, so damage
    anywhere else means the file was edited or two writers interleaved, and is an error.
    """
    if not path.is_file():
        return set()
    data = path.read_bytes()
    done: set[int] = set()
    offset = 0
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        if line.strip():
            try:
                record = json.loads(line)
                row_id = int(record["row_id"])
            except (ValueError, KeyError, TypeError):
                # The last piece: either no newline yet (torn) or the final line is unreadable.
                torn_tail = last or (i == len(lines) - 2 and not lines[-1].strip())
                if not torn_tail:
                    raise GenerateError(f"{path}: line {i + 1} is not a prediction record; the file is damaged "
                                        "(remove the bad line or use a new --output)") from None
                _truncate(path, offset)
                if notice is not None:
                    notice(f"{path.name}: dropped its torn last line ({len(line)} bytes after row {len(done)}), "
                           "written when a run was killed mid-write; that row is generated again")
                return done
            if last:
                # Valid JSON but no newline: the writer died before finishing the line. Keep the
                # record and complete the line so appends start on a fresh line.
                with open(path, "ab") as fh:
                    fh.write(b"\n")
                    fh.flush()
                    os.fsync(fh.fileno())
            if row_id in done:
                raise GenerateError(f"{path}: row_id {row_id} appears twice (two writers?); use a new --output")
            done.add(row_id)
        offset += len(line) + 1
    return done


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(size)
        fh.flush()
        os.fsync(fh.fileno())


@contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """One `eval generate` at a time writes ``out_dir`` (see :mod:`kitrec_fast.dirlock`); a second
    one is refused with the holder's pid, host and start time."""
    from kitrec_fast.dirlock import FolderInUse, hold

    try:
        with hold(out_dir, LOCK_FILE, "--output", "another `eval generate`"):
            yield
    except FolderInUse as exc:
        raise GenerateError(str(exc)) from None


def check_fingerprint(out_dir: Path, fingerprint: dict) -> None:
    path = out_dir / CONFIG_FILE
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text()).get("fingerprint", {})
    except ValueError:
        return  # a config torn by a kill; it is rewritten below
    diff = {k: (old.get(k), fingerprint.get(k)) for k in FINGERPRINT_KEYS if old.get(k) != fingerprint.get(k)}
    if diff and (out_dir / PREDICTIONS_FILE).is_file():
        lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise GenerateError(f"--output {out_dir} holds generations made with other settings ({lines}); "
                            "use a new --output directory")

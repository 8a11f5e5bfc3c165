"""Process-independent hashing for deterministic choices (validation split, kept negatives)."""

from __future__ import annotations

import hashlib


def stable_key(*parts: object) -> int:
    """A 64-bit integer from ``parts`` that never changes between processes (unlike ``hash()``)."""
    data = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")

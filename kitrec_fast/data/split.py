"""Stratified train/validation split by ``user_type``.

Each user type contributes ``floor(n * val_fraction + 0.5)`` rows to validation (3,000 rows at
0.1 -> exactly 300), so 12,000 rows of four types split 10,800 / 1,200. Which rows go to
validation is decided by sorting each type's rows on a BLAKE2b digest of
``(seed, user_type, user_id, row index)`` and taking the smallest: no RNG stream is involved, so
the split is identical across runs, machines, Python and numpy versions. Both index lists come
back in the original row order.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

from kitrec_fast.stable_key import stable_key


def val_count(n: int, val_fraction: float) -> int:
    return min(n, int(math.floor(n * val_fraction + 0.5)))


def stratified_split(user_types: Sequence[str], user_ids: Sequence[str], val_fraction: float,
                     seed: int) -> tuple[list[int], list[int]]:
    """Row indices ``(train, validation)`` for rows described by parallel ``user_types``/``user_ids``."""
    if len(user_types) != len(user_ids):
        raise ValueError("user_types and user_ids must have the same length")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"data.val_fraction: must be in [0, 1), got {val_fraction}")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(user_types):
        groups[t].append(i)
    val: list[int] = []
    for t in sorted(groups):
        idx = groups[t]
        k = val_count(len(idx), val_fraction)
        if k:
            ranked = sorted(idx, key=lambda i: (stable_key(seed, t, user_ids[i], i), i))
            val.extend(ranked[:k])
    val_set = set(val)
    return [i for i in range(len(user_types)) if i not in val_set], sorted(val_set)

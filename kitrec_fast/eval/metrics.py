"""Ranking metrics for one relevant item, calibration errors and bootstrap intervals.

Definitions follow the KitREC evaluation protocol: with the ground truth at 1-based ``position`` in the ranked list,
Hit@k = 1 if position <= k; MRR = 1/position (0 if absent, no cut-off); NDCG@k =
1/log2(position + 1) if position <= k, since with a single relevant item the ideal DCG is 1.
"""

from __future__ import annotations

import math
import zlib
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "DEFAULT_KS",
    "metric_names",
    "rank_metrics",
    "position_metrics",
    "gt_position",
    "calibration_errors",
    "bootstrap_ci",
    "group_seed",
]

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
# Bootstrap draws are materialised in blocks of at most this many indices (x8 bytes each).
_BOOTSTRAP_BLOCK = 2_000_000


def metric_names(ks: Sequence[int] = DEFAULT_KS) -> list[str]:
    """Keys of :func:`rank_metrics`, in report order."""
    return [f"hit@{k}" for k in ks] + ["mrr"] + [f"ndcg@{k}" for k in ks if k > 1]


def rank_metrics(
    ranked_ids: Sequence[str | None], gt_id: str, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Hit@k, MRR and NDCG@k of ``gt_id`` at its first occurrence in ``ranked_ids`` (case-insensitive).

    NDCG@1 is left out because it always equals Hit@1.
    """
    return position_metrics(gt_position(ranked_ids, gt_id), ks)


def gt_position(ranked: Sequence[str | None], gt_id: str) -> int | None:
    """1-based position of the first occurrence of ``gt_id`` (case-insensitive; None entries never match)."""
    want = str(gt_id).strip().upper()
    return next((i + 1 for i, item in enumerate(ranked) if item is not None and item.upper() == want), None)


def position_metrics(position: int | None, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """The metrics of a ground truth at 1-based ``position`` (None: not in the list)."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"hit@{k}"] = 1.0 if position is not None and position <= k else 0.0
    out["mrr"] = 0.0 if position is None else 1.0 / position
    for k in ks:
        if k > 1:
            hit = position is not None and position <= k
            out[f"ndcg@{k}"] = 1.0 / math.log2(position + 1) if hit else 0.0
    return out


def calibration_errors(
    confidences: Iterable[float | None], ratings: Iterable[float | None]
) -> dict[str, float | int | None]:
    """MAE and RMSE of ``confidence / 2`` (0-10 -> 0-5) against the 1-5 rating.

    Pairs where either side is missing are skipped and ``n`` says how many were used.
    """
    pairs = [
        (c / 2.0, r)
        for c, r in zip(confidences, ratings)
        if c is not None and r is not None and math.isfinite(c) and math.isfinite(r)
    ]
    if not pairs:
        return {"mae": None, "rmse": None, "n": 0}
    err = np.array([p - r for p, r in pairs], dtype=float)
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "n": len(pairs),
    }


def bootstrap_ci(
    values: np.ndarray, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05
) -> np.ndarray:
    """Percentile bootstrap interval of the column means of ``values`` (rows = units).

    All columns share the same resampled rows, so the intervals of related metrics come from one
    joint resampling. Returns an array of shape (n_columns, 2); NaN when there are no rows.
    """
    data = np.asarray(values, dtype=float)
    if data.ndim == 1:
        data = data[:, None]
    n, m = data.shape
    if n == 0 or n_resamples <= 0:
        return np.full((m, 2), np.nan)
    rng = np.random.default_rng(seed)
    means = np.empty((n_resamples, m))
    block = max(1, _BOOTSTRAP_BLOCK // n)
    for start in range(0, n_resamples, block):
        stop = min(n_resamples, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        for j in range(m):
            means[start:stop, j] = data[idx, j].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2], axis=0)
    return np.stack([lo, hi], axis=1)


def group_seed(seed: int, group: str) -> int:
    """A per-group seed that is stable across runs and Python processes (unlike ``hash``)."""
    return (int(seed) * 1_000_003 + zlib.crc32(group.encode("utf-8"))) % (2**32)

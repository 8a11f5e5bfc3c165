"""Every metric against hand-worked cases, plus calibration and bootstrap behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kitrec_fast.eval.metrics import (
    bootstrap_ci,
    calibration_errors,
    group_seed,
    metric_names,
    rank_metrics,
)

RANKED = ["I1", "I2", "I3", "I4", "I5", "I6", "I7", "I8", "I9", "I10", "I11", "I12"]


def test_metric_names_order() -> None:
    assert metric_names() == ["hit@1", "hit@5", "hit@10", "mrr", "ndcg@5", "ndcg@10"]


def test_gt_first() -> None:
    m = rank_metrics(RANKED, "I1")
    assert m == {"hit@1": 1.0, "hit@5": 1.0, "hit@10": 1.0, "mrr": 1.0, "ndcg@5": 1.0, "ndcg@10": 1.0}


def test_gt_at_position_3() -> None:
    m = rank_metrics(RANKED, "I3")
    assert m["hit@1"] == 0.0 and m["hit@5"] == 1.0 and m["hit@10"] == 1.0
    assert m["mrr"] == pytest.approx(1 / 3)
    assert m["ndcg@5"] == pytest.approx(0.5)  # 1 / log2(4)
    assert m["ndcg@10"] == pytest.approx(0.5)


def test_gt_at_position_5_is_inside_at_5() -> None:
    m = rank_metrics(RANKED, "I5")
    assert m["hit@5"] == 1.0
    assert m["ndcg@5"] == pytest.approx(1 / math.log2(6))  # 0.38685...
    assert m["ndcg@5"] == pytest.approx(0.386852807)


def test_gt_at_position_7() -> None:
    m = rank_metrics(RANKED, "I7")
    assert m["hit@1"] == 0.0 and m["hit@5"] == 0.0 and m["hit@10"] == 1.0
    assert m["mrr"] == pytest.approx(1 / 7)
    assert m["ndcg@5"] == 0.0
    assert m["ndcg@10"] == pytest.approx(1 / 3)  # 1 / log2(8)


def test_gt_at_position_12_beyond_cutoffs_still_counts_for_mrr() -> None:
    m = rank_metrics(RANKED, "I12")
    assert m["hit@10"] == 0.0 and m["ndcg@10"] == 0.0
    assert m["mrr"] == pytest.approx(1 / 12)


def test_gt_absent_and_empty_list() -> None:
    zero = {"hit@1": 0.0, "hit@5": 0.0, "hit@10": 0.0, "mrr": 0.0, "ndcg@5": 0.0, "ndcg@10": 0.0}
    assert rank_metrics(RANKED, "NOPE") == zero
    assert rank_metrics([], "I1") == zero


def test_custom_ks() -> None:
    m = rank_metrics(RANKED, "I2", ks=(2, 3))
    assert m == {"hit@2": 1.0, "hit@3": 1.0, "mrr": 0.5,
                 "ndcg@2": pytest.approx(1 / math.log2(3)), "ndcg@3": pytest.approx(1 / math.log2(3))}


def test_calibration_hand_worked() -> None:
    # confidences 8, 6, 10 -> 4, 3, 5 against ratings 5, 3, 4: errors -1, 0, +1
    c = calibration_errors([8.0, 6.0, 10.0, None, 4.0], [5.0, 3.0, 4.0, 2.0, None])
    assert c["n"] == 3
    assert c["mae"] == pytest.approx(2 / 3)
    assert c["rmse"] == pytest.approx(math.sqrt(2 / 3))


def test_calibration_nothing_to_pair() -> None:
    assert calibration_errors([None], [4.0]) == {"mae": None, "rmse": None, "n": 0}


def test_bootstrap_contains_mean_and_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    values = np.stack([rng.random(500) < 0.3, rng.random(500)], axis=1).astype(float)
    ci1 = bootstrap_ci(values, 500, seed=7)
    ci2 = bootstrap_ci(values, 500, seed=7)
    ci3 = bootstrap_ci(values, 500, seed=8)
    assert np.array_equal(ci1, ci2)
    assert not np.array_equal(ci1, ci3)
    means = values.mean(axis=0)
    assert np.all(ci1[:, 0] <= means) and np.all(means <= ci1[:, 1])
    # a proportion near 0.3 with n=500 has standard error ~0.02: the interval is ~±0.04
    assert 0.05 < ci1[0, 1] - ci1[0, 0] < 0.12


def test_bootstrap_blocks_give_same_shape_for_large_n() -> None:
    values = np.ones(50_000)
    ci = bootstrap_ci(values, 100, seed=0)
    assert ci.shape == (1, 2) and np.allclose(ci, 1.0)


def test_bootstrap_empty_is_nan() -> None:
    assert np.isnan(bootstrap_ci(np.zeros((0, 3)), 100)).all()


def test_group_seed_stable() -> None:
    assert group_seed(0, "overall") == group_seed(0, "overall")
    assert group_seed(0, "a") != group_seed(0, "b")
    assert group_seed(0, "a") != group_seed(1, "a")

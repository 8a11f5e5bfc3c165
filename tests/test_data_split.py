from collections import Counter

from kitrec_fast.data.split import stratified_split, val_count
from kitrec_fast.stable_key import stable_key

TYPES = ["overlapping_books_music", "cold_start_2core_music", "cold_start_3core_music", "cold_start_4core_music"]


def _rows(n_per_type=3000):
    types = [TYPES[i % 4] for i in range(4 * n_per_type)]
    users = [f"U{i:06d}" for i in range(len(types))]
    return types, users


def test_exact_counts_12k():
    types, users = _rows()
    train, val = stratified_split(types, users, 0.1, 42)
    assert (len(train), len(val)) == (10_800, 1_200)
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(12_000))
    assert Counter(types[i] for i in val) == {t: 300 for t in TYPES}
    assert Counter(types[i] for i in train) == {t: 2_700 for t in TYPES}
    assert train == sorted(train) and val == sorted(val)


def test_val_fraction_zero():
    types, users = _rows(10)
    train, val = stratified_split(types, users, 0.0, 42)
    assert val == [] and train == list(range(40))


def test_deterministic_and_seed_dependent():
    types, users = _rows(50)
    a = stratified_split(types, users, 0.1, 42)
    assert a == stratified_split(list(types), list(users), 0.1, 42)
    assert a != stratified_split(types, users, 0.1, 43)
    # pinned: the split must not change across machines, Python or numpy versions
    assert a[1][:5] == PINNED_VAL_HEAD


PINNED_VAL_HEAD = [3, 15, 26, 39, 40]


def test_stable_key_is_pinned():
    # BLAKE2b of "42\x1fa\x1fb": the same in every process, unlike hash() under PYTHONHASHSEED
    assert stable_key(42, "a", "b") == 0x3479CB0EF558E161


def test_val_count_rounding():
    assert val_count(3000, 0.1) == 300
    assert val_count(5, 0.1) == 1  # 0.5 rounds up
    assert val_count(4, 0.1) == 0
    assert val_count(10, 0.0) == 0

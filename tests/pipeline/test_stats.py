"""RunningStats: merging random splits equals NumPy over all rows; JSON/file round trips; Normalizer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnstream.pipeline.errors import DatasetError, ShapeError
from rnnstream.pipeline.stats import STD_FLOOR, Normalizer, RunningStats, normalize


def _data(seed: int, n: int, d: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # large offset vs spread: the case where naive sum-of-squares variance loses digits
    return rng.normal(loc=rng.uniform(-1e3, 1e3, d), scale=rng.uniform(0.01, 10, d), size=(n, d))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 400),
    d=st.integers(1, 6),
    cuts=st.lists(st.floats(0, 1), max_size=8),
)
def test_merge_of_random_splits_equals_numpy(seed, n, d, cuts):
    x = _data(seed, n, d)
    bounds = sorted({0, n, *(int(c * n) for c in cuts)})
    parts = [RunningStats.empty(d).update(x[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    # merge in a tree-ish order and left-to-right: both must match
    merged = RunningStats.merge_all(parts)
    tree = parts[0] if len(parts) == 1 else RunningStats.merge_all([RunningStats.merge_all(parts[::2]), RunningStats.merge_all(parts[1::2])])
    for stats in (merged, tree):
        assert stats.count == n
        np.testing.assert_allclose(stats.mean, x.mean(axis=0), rtol=1e-9, atol=0)
        np.testing.assert_allclose(stats.var, x.var(axis=0), rtol=1e-9, atol=0)


def test_update_in_pieces_including_empty_and_single_rows():
    x = _data(1, 50, 3)
    stats = RunningStats.empty(3)
    stats.update(x[:0]).update(x[0]).update(x[1:2]).update(x[2:])
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.var, x.var(0), rtol=1e-9)
    assert stats.count == 50


def test_merge_is_pure():
    a, b = RunningStats.of(_data(2, 10, 2)), RunningStats.of(_data(3, 7, 2))
    a0, b0 = a.copy(), b.copy()
    c = a.merge(b)
    assert a == a0 and b == b0 and c.count == 17
    assert RunningStats.empty(2).merge(a) == a and a.merge(RunningStats.empty(2)) == a


def test_std_floor_and_empty_stats():
    const = np.tile([[1.0, 2.0]], (5, 1))
    stats = RunningStats.of(const)
    np.testing.assert_array_equal(stats.var, [0.0, 0.0])
    np.testing.assert_array_equal(stats.std, [STD_FLOOR, STD_FLOOR])
    np.testing.assert_array_equal(normalize(const, stats), np.zeros((5, 2), np.float32))
    empty = RunningStats.empty(2)
    assert empty.count == 0 and not empty.var.any()
    with pytest.raises(DatasetError, match="0 rows"):
        Normalizer.from_stats(empty)


def test_dimension_mismatches_raise_shape_error():
    stats = RunningStats.empty(3)
    with pytest.raises(ShapeError, match="2 dimensions, expected 3"):
        stats.update(np.zeros((4, 2)))
    with pytest.raises(ShapeError, match="dimension 3 with stats of dimension 2"):
        stats.merge(RunningStats.empty(2))
    with pytest.raises(ShapeError, match=r"last axis to be 3"):
        Normalizer.from_stats(RunningStats.of(np.eye(3)))(np.zeros((2, 4)))
    with pytest.raises(ShapeError, match=r"\[N, D\]"):
        stats.update(np.zeros((2, 2, 3)))


def test_non_finite_input_is_refused():
    with pytest.raises(DatasetError, match="1 NaN/Inf"):
        RunningStats.empty(2).update(np.array([[0.0, np.nan]]))


def test_json_and_file_round_trip_exactly(tmp_path):
    stats = RunningStats.of(_data(4, 33, 5))
    assert RunningStats.from_json(stats.to_json()) == stats
    assert RunningStats.from_dict(stats.to_dict()) == stats
    stats.save(tmp_path / "stats.json")
    loaded = RunningStats.load(tmp_path / "stats.json")
    assert loaded == stats
    np.testing.assert_array_equal(loaded.std, stats.std)


def test_bad_stats_files_name_the_file(tmp_path):
    path = tmp_path / "stats.json"
    path.write_text("{not json")
    with pytest.raises(DatasetError, match=r"stats\.json.*not valid JSON"):
        RunningStats.load(path)
    path.write_text('{"count": 3, "mean": [1, 2]}')
    with pytest.raises(DatasetError, match=r"stats\.json.*missing keys \['m2'\]"):
        RunningStats.load(path)
    path.write_text('{"count": 3, "mean": [1, 2], "m2": [1]}')
    with pytest.raises(ShapeError, match=r"stats\.json"):
        RunningStats.load(path)


def test_normalizer_standardizes():
    x = _data(5, 1000, 4)
    z = normalize(x, RunningStats.of(x))
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-3)
    # works on any leading shape, e.g. [B, T, D]
    norm = Normalizer.from_stats(RunningStats.of(x))
    np.testing.assert_array_equal(norm(x.reshape(10, 100, 4).astype(np.float32)).reshape(1000, 4), norm(x.astype(np.float32)))


def test_pickles_as_a_combine_fn_accumulator():
    import pickle

    acc = RunningStats.empty(3)
    for part in np.array_split(_data(6, 40, 3), 4):
        acc = acc.update(part)  # add_input returns the accumulator
    again = pickle.loads(pickle.dumps(acc))
    assert again == acc and again.dim == 3 and again is not acc
    merged = RunningStats.merge_all([again, RunningStats.empty(3), RunningStats.of(_data(7, 5, 3))])
    assert merged.count == 45

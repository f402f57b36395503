"""Sensor grid featurizer: streaming equals offline, an independent np.interp reference, gaps, tables, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnstream.pipeline.config import FeatureConfig, SensorConfig
from rnnstream.pipeline.errors import (
    ConfigError,
    MissingColumnsError,
    NonNumericError,
    SensorError,
    ShapeError,
    StateError,
    TimestampError,
)
from rnnstream.pipeline.sensors import SensorFeaturizer, read_sensor_table


def _series(seed: int, n: int, c: int, *, start: float, long_gaps: int, max_gap: float):
    rng = np.random.default_rng(seed)
    gaps = rng.uniform(0.01, max_gap, n)
    if n > 1 and long_gaps:
        gaps[rng.integers(1, n, long_gaps)] = rng.uniform(max_gap * 1.01, max_gap * 6, long_gaps)
    ts = start + np.cumsum(gaps)
    vals = rng.normal(0, 3, (n, c)).astype(np.float32)
    return ts, vals


def _stream(fz: SensorFeaturizer, ts, vals, sizes):
    carry = fz.initial_state()
    times, frames, starts, pos, offset = [], [], [], 0, 0
    for size in [*sizes, len(ts)]:
        out, carry = fz.step(ts[pos : pos + size], vals[pos : pos + size], carry)
        assert out.values.shape == (len(out), fz.dim) and out.values.dtype == np.float32
        assert carry.dtype == np.float64 and carry.ndim == 1
        times.append(out.times)
        frames.append(out.values)
        starts += [offset + s for s in out.segment_starts]
        offset += len(out)
        pos += size
    return np.concatenate(times), np.concatenate(frames), starts


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(0, 60),
    c=st.integers(1, 3),
    policy=st.sampled_from(["split", "flag"]),
    rate=st.sampled_from([1.0, 2.5, 10.0, 0.3]),
    start=st.sampled_from([0.0, 123.456, 1.7e9]),
    long_gaps=st.integers(0, 4),
    sizes=st.lists(st.one_of(st.just(0), st.just(1), st.integers(0, 20)), max_size=15),
    covariates=st.sampled_from([(), ("hour_of_day",), ("day_of_week", "hour_of_day", "day_of_year")]),
)
def test_streaming_equals_offline(seed, n, c, policy, rate, start, long_gaps, sizes, covariates):
    cfg = SensorConfig(columns=tuple(f"c{i}" for i in range(c)), rate_hz=rate, max_gap_s=2.0, gap_policy=policy,
                       time_features=covariates)
    fz = SensorFeaturizer(cfg)
    ts, vals = _series(seed, n, c, start=start, long_gaps=long_gaps, max_gap=2.0)
    offline = fz.featurize(ts, vals)
    times, frames, starts = _stream(fz, ts, vals, sizes)
    np.testing.assert_array_equal(times, offline.times)
    np.testing.assert_allclose(frames, offline.values, atol=1e-5, rtol=0)
    assert starts == list(offline.segment_starts)
    if policy == "flag":
        assert not offline.segment_starts


def _reference(ts, vals, cfg: SensorConfig):
    """Independent brute force: every grid point in [t0, tN] by np.interp, minus/flagging long-gap interiors."""
    r = cfg.rate_hz
    k = np.arange(np.ceil(ts[0] * r), np.floor(ts[-1] * r) + 1)
    g = k / r
    g = g[(g >= ts[0]) & (g <= ts[-1])]
    cols = [np.interp(g, ts, vals[:, j].astype(np.float64)) for j in range(vals.shape[1])]
    out = np.stack(cols, axis=1)
    right = np.searchsorted(ts, g, side="left")  # ts[right-1] < g <= ts[right]
    inside = np.zeros(len(g), bool)
    ok = (right > 0) & (right < len(ts))
    gap_len = np.zeros(len(g))
    gap_len[ok] = ts[right[ok]] - ts[right[ok] - 1]
    inside[ok] = (gap_len[ok] > cfg.max_gap_s) & (g[ok] < ts[right[ok]])
    if cfg.gap_policy == "flag":
        return g, np.concatenate([out, inside[:, None]], axis=1), []
    keep = ~inside
    g, out, right = g[keep], out[keep], right[keep]
    # a new segment starts at the first kept point after each long gap
    long_after = np.flatnonzero(np.diff(ts) > cfg.max_gap_s) + 1  # sample index ending a long gap
    starts = sorted({int(np.searchsorted(g, ts[i], side="left")) for i in long_after} - {len(g)})
    return g, out, starts


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(2, 80),
    policy=st.sampled_from(["split", "flag"]),
    rate=st.sampled_from([1.0, 4.0, 0.7]),
    long_gaps=st.integers(0, 3),
)
def test_offline_matches_np_interp_reference(seed, n, policy, rate, long_gaps):
    cfg = SensorConfig(columns=("a", "b"), rate_hz=rate, max_gap_s=1.5, gap_policy=policy)
    ts, vals = _series(seed, n, 2, start=10.0, long_gaps=long_gaps, max_gap=1.5)
    got = SensorFeaturizer(cfg).featurize(ts, vals)
    g, expected, starts = _reference(ts, vals, cfg)
    np.testing.assert_allclose(got.times, g, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got.values, expected, atol=1e-5, rtol=1e-6)
    assert list(got.segment_starts) == starts


def test_split_policy_hand_example():
    cfg = FeatureConfig.sensor_default(["x"], rate_hz=1.0, max_gap_s=2.0, gap_policy="split")
    fz = SensorFeaturizer(cfg)
    ts = np.array([0.5, 2.0, 3.0, 10.0, 11.5])
    vals = np.array([[1.0], [4.0], [6.0], [0.0], [3.0]])
    out = fz.featurize(ts, vals)
    # grid 1, 2, 3 (first segment), nothing in (3, 10), then 10, 11
    np.testing.assert_array_equal(out.times, [1.0, 2.0, 3.0, 10.0, 11.0])
    np.testing.assert_allclose(out.values[:, 0], [2.0, 4.0, 6.0, 0.0, 2.0])
    assert out.segment_starts == (3,)
    segs = fz.segments(ts, vals)
    assert [s.times.tolist() for s in segs] == [[1.0, 2.0, 3.0], [10.0, 11.0]]
    # the segment start after a gap is reported even when its first frame arrives in a later step
    first, carry = fz.step(ts[:4], vals[:4], fz.initial_state())
    assert first.times.tolist() == [1.0, 2.0, 3.0, 10.0] and first.segment_starts == (3,)
    first, carry = fz.step(np.array([0.5, 2.0, 3.0, 10.2]), vals[:4], fz.initial_state())
    assert first.segment_starts == () and len(first) == 3
    second, _ = fz.step(np.array([11.5]), vals[4:], carry)
    assert second.times.tolist() == [11.0] and second.segment_starts == (0,)


def test_flag_policy_hand_example():
    cfg = SensorConfig(columns=("x",), rate_hz=1.0, max_gap_s=2.0, gap_policy="flag")
    out = SensorFeaturizer(cfg).featurize(np.array([0.0, 1.0, 5.0, 6.0]), np.array([[0.0], [1.0], [5.0], [0.0]]))
    np.testing.assert_array_equal(out.times, [0, 1, 2, 3, 4, 5, 6])
    np.testing.assert_allclose(out.values[:, 0], [0, 1, 2, 3, 4, 5, 0])
    np.testing.assert_array_equal(out.values[:, 1], [0, 0, 1, 1, 1, 0, 0])
    assert out.segment_starts == ()


def test_grid_is_absolute_not_relative_to_the_start():
    cfg = SensorConfig(columns=("x",), rate_hz=2.0, max_gap_s=5.0)
    out = SensorFeaturizer(cfg).featurize(np.array([0.3, 1.3]), np.array([[0.0], [1.0]]))
    np.testing.assert_array_equal(out.times, [0.5, 1.0])
    np.testing.assert_allclose(out.values[:, 0], [0.2, 0.7], atol=1e-6)


def test_chunk_validation_errors():
    fz = SensorFeaturizer(SensorConfig(columns=("x", "y")))
    init = fz.initial_state()
    with pytest.raises(TimestampError, match=r"timestamp 1\.0 at index 2 goes back from 2\.0 at index 1"):
        fz.step(np.array([0.0, 2.0, 1.0]), np.zeros((3, 2)), init)
    with pytest.raises(TimestampError, match=r"timestamp 2\.0 at index 1 duplicates 2\.0 at index 0"):
        fz.step(np.array([2.0, 2.0]), np.zeros((2, 2)), init)
    _, carry = fz.step(np.array([0.0, 5.0]), np.zeros((2, 2)), init)
    with pytest.raises(TimestampError, match=r"timestamp 5\.0 at index 0 is not after the previous chunk's last timestamp 5\.0"):
        fz.step(np.array([5.0]), np.zeros((1, 2)), carry)
    with pytest.raises(TimestampError, match="index 1 is nan"):
        fz.step(np.array([0.0, np.nan]), np.zeros((2, 2)), init)
    with pytest.raises(NonNumericError, match=r"channel 1 holds nan at index 1"):
        fz.step(np.array([0.0, 1.0]), np.array([[0.0, 0.0], [0.0, np.nan]]), init)
    with pytest.raises(ShapeError, match=r"values must be \[N=2, C=2\].*got shape \[2, 3\]"):
        fz.step(np.array([0.0, 1.0]), np.zeros((2, 3)), init)
    with pytest.raises(TimestampError, match="float seconds"):
        fz.step(np.array(["2020-01-01", "x"], dtype=object), np.zeros((2, 2)), init)
    with pytest.raises(StateError, match="float64 \\[5\\]"):
        fz.step(np.array([0.0]), np.zeros((1, 2)), np.zeros(4))


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

CFG = SensorConfig(columns=("temp", "load"), timestamp_column="time")


def test_read_csv_numeric_seconds(tmp_path):
    path = tmp_path / "s.csv"
    pd.DataFrame({"time": [0.0, 1.5, 3.0], "load": [1, 2, 3], "temp": [20.5, 21.0, 21.5], "x": ["a", "b", "c"]}).to_csv(path, index=False)
    ts, vals = read_sensor_table(path, FeatureConfig(kind="sensor", audio=None, sensor=CFG))
    np.testing.assert_array_equal(ts, [0.0, 1.5, 3.0])
    assert vals.dtype == np.float32 and vals.shape == (3, 2)
    np.testing.assert_array_equal(vals, [[20.5, 1], [21.0, 2], [21.5, 3]])  # config order, not file order


def test_read_csv_datetime_strings_and_parquet_datetimes(tmp_path):
    stamps = ["2016-07-01 00:00:00", "2016-07-01 01:00:00", "2016-07-01 02:00:30"]
    df = pd.DataFrame({"time": stamps, "temp": [1.0, 2.0, 3.0], "load": [4.0, 5.0, 6.0]})
    df.to_csv(tmp_path / "d.csv", index=False)
    ts, _ = read_sensor_table(tmp_path / "d.csv", CFG)
    epoch = 1467331200.0  # 2016-07-01T00:00:00Z
    np.testing.assert_array_equal(ts, [epoch, epoch + 3600, epoch + 7230])
    df.assign(time=pd.to_datetime(df["time"])).to_parquet(tmp_path / "d.parquet")
    ts2, vals2 = read_sensor_table(tmp_path / "d.parquet", CFG)
    np.testing.assert_array_equal(ts2, ts)
    np.testing.assert_array_equal(vals2[:, 1], [4, 5, 6])


def test_missing_columns_names_missing_and_present(tmp_path):
    pd.DataFrame({"time": [0.0], "temp": [1.0], "other": [2.0]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(MissingColumnsError, match=r"m\.csv: missing column\(s\) \['load'\]; the table has \['time', 'temp', 'other'\]"):
        read_sensor_table(tmp_path / "m.csv", CFG)


def test_non_numeric_value_names_column_row_and_value(tmp_path):
    pd.DataFrame({"time": [0.0, 1.0, 2.0], "temp": [1.0, 2.0, 3.0], "load": ["4", "oops", "6"]}).to_csv(tmp_path / "n.csv", index=False)
    with pytest.raises(NonNumericError, match=r"n\.csv: column 'load' has the non-numeric value 'oops' at row 1"):
        read_sensor_table(tmp_path / "n.csv", CFG)
    pd.DataFrame({"time": [0.0, 1.0], "temp": [1.0, None], "load": [4.0, 5.0]}).to_csv(tmp_path / "g.csv", index=False)
    with pytest.raises(NonNumericError, match=r"column 'temp' has a missing value at row 1"):
        read_sensor_table(tmp_path / "g.csv", CFG)


@pytest.mark.parametrize(
    "times, match",
    [
        ([0.0, 2.0, 1.0], r"row 2 \(1\.0\) is earlier than row 1 \(2\.0\)"),
        ([0.0, 1.0, 1.0], r"row 2 \(1\.0\) duplicates row 1 \(1\.0\)"),
        (["2020-01-01", "not a date", "2020-01-03"], r"value 'not a date' at row 1"),
    ],
)
def test_bad_timestamps(tmp_path, times, match):
    pd.DataFrame({"time": times, "temp": [1.0, 2.0, 3.0], "load": [4.0, 5.0, 6.0]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(TimestampError, match=r"t\.csv.*" + match):
        read_sensor_table(tmp_path / "t.csv", CFG)


def test_unreadable_tables(tmp_path):
    (tmp_path / "e.csv").write_bytes(b"")
    with pytest.raises(SensorError, match=r"e\.csv: the file is empty"):
        read_sensor_table(tmp_path / "e.csv", CFG)
    (tmp_path / "x.xlsx").write_bytes(b"PK")
    with pytest.raises(SensorError, match=r"x\.xlsx: unsupported sensor table format '\.xlsx'"):
        read_sensor_table(tmp_path / "x.xlsx", CFG)
    (tmp_path / "bad.parquet").write_text("not parquet at all")
    with pytest.raises(SensorError, match=r"bad\.parquet: not readable"):
        read_sensor_table(tmp_path / "bad.parquet", CFG)
    pd.DataFrame({"time": [], "temp": [], "load": []}).to_csv(tmp_path / "h.csv", index=False)
    with pytest.raises(SensorError, match=r"h\.csv: the table has no rows"):
        read_sensor_table(tmp_path / "h.csv", CFG)


def test_table_to_frames_end_to_end(tmp_path):
    cfg = SensorConfig(columns=("temp", "load"), timestamp_column="time", rate_hz=1.0, max_gap_s=3.0)
    pd.DataFrame({"time": [0.0, 1.0, 2.0, 10.0, 11.0], "temp": [0, 1, 2, 3, 4], "load": [5, 5, 5, 5, 5]}).to_parquet(tmp_path / "s.parquet")
    ts, vals = read_sensor_table(tmp_path / "s.parquet", cfg)
    segs = SensorFeaturizer(cfg).segments(ts, vals)
    assert [len(s.times) for s in segs] == [3, 2]
    np.testing.assert_array_equal(segs[1].values, [[3, 5], [4, 5]])


@pytest.mark.parametrize("rate", [156.25, 100.0, 1 / 3600])
def test_timestamps_computed_as_k_over_rate_keep_every_frame(rate):
    """``k / rate`` in floating point can land a hair below the grid point (30 rows at 156.25 Hz used to give
    29 frames); such times count as on the grid."""
    k = np.arange(30)
    ts = k / rate
    values = np.arange(30, dtype=np.float64)[:, None]
    frames = SensorFeaturizer(FeatureConfig.sensor_default(["a"], rate_hz=rate, max_gap_s=10 / rate)).featurize(ts, values)
    assert frames.values.shape == (30, 1)
    np.testing.assert_array_equal(frames.values[:, 0], values[:, 0].astype(np.float32))


def test_time_features_are_calendar_phases():
    from rnnstream.pipeline.sensors import time_features

    monday_6am = 4 * 86400.0 + 6 * 3600.0  # 1970-01-05 was a Monday
    feats = time_features(np.array([monday_6am]), ("hour_of_day", "day_of_week"))
    np.testing.assert_allclose(feats[0], [1.0, 0.0, np.sin(2 * np.pi * 0.25 / 7), np.cos(2 * np.pi * 0.25 / 7)],
                               atol=1e-6)
    cfg = FeatureConfig.sensor_default(["x"], rate_hz=1 / 3600, time_features=("hour_of_day",))
    assert cfg.dim == 3 and FeatureConfig.from_json(cfg.to_json()) == cfg
    assert "time_features" not in FeatureConfig.sensor_default(["x"]).to_json()
    with pytest.raises(ConfigError, match="time_features"):
        FeatureConfig.sensor_default(["x"], time_features=("minute",))

"""Sensor series: tables in, fixed-rate grid frames out, streaming equal to offline.

Irregular samples ``(t_i, v_i)`` become frames on the grid ``k / rate_hz`` (absolute multiples, so the
grid does not depend on where a stream or chunk starts). Between two consecutive samples ``a < b``:

* ``b - a <= max_gap_s``: the grid points in ``(a, b]`` are linear interpolations of ``v_a`` and ``v_b``;
* ``b - a > max_gap_s`` with ``gap_policy="split"``: no grid point inside the gap; a new segment starts
  at ``b`` (a grid point exactly at ``b`` gets ``v_b``), and its first frame is reported in
  :attr:`SensorFrames.segment_starts` so the runtime can reset model state there;
* ``b - a > max_gap_s`` with ``gap_policy="flag"``: interpolated as a short gap, and the extra last
  feature ``gap`` is 1.0 at grid points strictly inside ``(a, b)`` (0.0 everywhere else).

The first sample of a stream emits the grid point at its own time only if it lies exactly on the grid.
Which interval owns a grid point is decided by ``floor(t * rate_hz)`` alone (interval ``(a, b]`` owns
``k`` in ``floor(a * rate) + 1 .. floor(b * rate)``, with the rate as a ratio of small integers where it
is one, see :func:`rate_ratio`, and a time within ``GRID_TOLERANCE`` grid periods of a grid point counted
as on it), so every grid point is emitted once and each
frame depends only on its two neighbouring samples: streaming over any chunking equals offline
exactly (the carry holds the last sample in float64).

::

    fz = SensorFeaturizer(cfg)
    frames, carry = fz.step(timestamps, values, fz.initial_state())   # frames.times, .values, .segment_starts
    ts, vals = read_sensor_table("readings.csv", cfg)                 # CSV or Parquet
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from rnnstream.pipeline.config import TIME_FEATURES, FeatureConfig, SensorConfig
from rnnstream.pipeline.errors import (
    ConfigError,
    MissingColumnsError,
    NonNumericError,
    SensorError,
    ShapeError,
    StateError,
    TimestampError,
    require,
)

# carry layout (float64): [has_prev, last_t, pending_segment_start, last_row (C values)]
_HAS_PREV, _LAST_T, _PENDING, _ROW = 0, 1, 2, 3


def _sensor_config(cfg: SensorConfig | FeatureConfig) -> SensorConfig:
    sensor = cfg.sensor if isinstance(cfg, FeatureConfig) else cfg
    if not isinstance(sensor, SensorConfig):
        raise ConfigError("sensor featurization needs a feature config of kind 'sensor'")
    return sensor


def _order_violation(ts: np.ndarray) -> tuple[int, bool, np.ndarray] | None:
    """The first timestamp of ``ts [N]`` not after the one before: ``(index, whether it repeats the one before,
    every such index [K])``, or None when the times strictly increase."""
    bad = np.flatnonzero(np.diff(ts) <= 0) + 1 if ts.size > 1 else np.zeros(0, np.int64)
    if not bad.size:
        return None
    i = int(bad[0])
    return i, bool(ts[i] == ts[i - 1]), bad


@dataclass(frozen=True, eq=False)
class SensorFrames:
    """Frames of one step.

    Attributes:
        times: ``[T]`` float64 grid times (seconds).
        values: ``[T, dim]`` float32 frames (channels, then ``gap`` under policy "flag").
        segment_starts: indices into this output where a new segment begins after a long gap
            (policy "split"); the stream's very first segment is not listed.
    """

    times: np.ndarray
    values: np.ndarray
    segment_starts: tuple[int, ...] = ()

    def __len__(self) -> int:
        return int(self.times.shape[0])


@dataclass(frozen=True, eq=False)
class Segment:
    """One gap-free stretch of grid frames: ``times [T]`` float64, ``values [T, dim]`` float32."""

    times: np.ndarray
    values: np.ndarray


# --------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------


def validate_chunk(
    timestamps: np.ndarray, values: np.ndarray, n_channels: int, last_t: float | None = None, *, where: str = "chunk"
) -> tuple[np.ndarray, np.ndarray]:
    """Check one chunk and return ``(timestamps [N] float64, values [N, C] float64)``.

    Raises:
        ShapeError: timestamps not ``[N]``, values not ``[N, n_channels]``.
        TimestampError: NaN/Inf times, or times not strictly increasing (within the chunk, or not after
            ``last_t``, the previous chunk's last time); names the offending times and index.
        NonNumericError: NaN/Inf values; names the channel and row.
    """
    try:
        ts = np.asarray(timestamps, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TimestampError(f"{where}: timestamps must be float seconds ({exc})") from None
    try:
        vals = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise NonNumericError(f"{where}: sensor values are not numbers ({exc})") from None
    if ts.ndim != 1:
        raise ShapeError(f"{where}: timestamps must be [N], got shape {list(ts.shape)}")
    if vals.ndim == 1 and n_channels == 1:
        vals = vals[:, None]
    if vals.ndim != 2 or vals.shape[0] != ts.shape[0] or vals.shape[1] != n_channels:
        raise ShapeError(
            f"{where}: values must be [N={ts.shape[0]}, C={n_channels}] (one column per configured channel), "
            f"got shape {list(vals.shape)}"
        )
    if ts.size == 0:
        return ts, vals
    if not np.isfinite(ts).all():
        i = int(np.argmax(~np.isfinite(ts)))
        raise TimestampError(f"{where}: timestamp at index {i} is {float(ts[i])}; expected finite seconds")
    if last_t is not None and not ts[0] > last_t:
        raise TimestampError(
            f"{where}: timestamp {float(ts[0])!r} at index 0 is not after the previous chunk's last timestamp {float(last_t)!r}; "
            "expected strictly increasing times"
        )
    if (found := _order_violation(ts)) is not None:
        i, repeat, bad = found
        how = "duplicates" if repeat else "goes back from"
        raise TimestampError(f"{where}: timestamp {float(ts[i])!r} at index {i} {how} "
                             f"{float(ts[i - 1])!r} at index {i - 1}; expected strictly increasing times "
                             f"({bad.size} violation(s))")
    if not np.isfinite(vals).all():
        row, col = (int(v[0]) for v in np.nonzero(~np.isfinite(vals)))
        raise NonNumericError(
            f"{where}: channel {col} holds {float(vals[row, col])} at index {row} (time {float(ts[row])!r}); expected finite numbers"
        )
    return ts, vals


GRID_TOLERANCE = 1e-9  # in grid units (fractions of one grid period)


@functools.lru_cache(maxsize=64)
def rate_ratio(rate_hz: float) -> tuple[float, float]:
    """``rate_hz`` as ``(num, den)`` with ``num / den == rate_hz``, small integers when the rate is a simple fraction.

    Grid index and time are ``floor(t * num / den)`` and ``k * den / num``: for rates such as 100 Hz or
    1/3600 Hz (hourly) they are then exact for on-grid times (``k * 3600``, not ``k / 0.000277...``).
    """
    frac = Fraction(rate_hz).limit_denominator(10**6)
    if frac.numerator > 0 and frac.numerator / frac.denominator == rate_hz:
        return float(frac.numerator), float(frac.denominator)
    return float(rate_hz), 1.0


def grid_frames(
    prev_t: np.ndarray,
    prev_v: np.ndarray,
    ts: np.ndarray,
    vals: np.ndarray,
    starts: np.ndarray,
    cfg: SensorConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid frames for the intervals ``(prev_t[j], ts[j]]``.

    Args:
        prev_t, prev_v: ``[J]`` / ``[J, C]`` the sample before each interval (ignored where ``starts``).
        ts, vals: ``[J]`` / ``[J, C]`` the sample ending each interval.
        starts: ``[J]`` bool: the interval starts a segment (stream start or split gap), so it emits only
            a grid point exactly at ``ts[j]``.

    Returns:
        ``times [T]`` float64, ``values [T, dim]`` float32, ``first [J]`` int64: index of the first output
        point owned by interval ``j`` or later (``T`` when none).
    """
    num, den = rate_ratio(cfg.rate_hz)
    # Grid positions in grid units; a time within GRID_TOLERANCE units of a grid point is on it, so
    # timestamps written as k / rate in floating point (k / 156.25 * 156.25 = k - 1e-16) keep their frame.
    x_end = ts * num / den
    k_end = np.floor(x_end + GRID_TOLERANCE).astype(np.int64)
    k_start = np.floor(prev_t * num / den + GRID_TOLERANCE).astype(np.int64) + 1
    # a segment start owns the grid point at its own time only if it is on the grid
    on_grid = np.abs(x_end - k_end) <= GRID_TOLERANCE
    k_start = np.where(starts, np.where(on_grid, k_end, k_end + 1), k_start)
    counts = np.maximum(k_end - k_start + 1, 0)
    first = np.concatenate(([0], np.cumsum(counts)))[:-1]
    total = int(counts.sum())
    interval = np.repeat(np.arange(ts.shape[0]), counts)
    k = k_start[interval] + (np.arange(total) - first[interval])
    g = k * den / num
    a, b = prev_t[interval], ts[interval]
    is_start = starts[interval]
    span = np.where(is_start, 1.0, b - a)
    w = np.where(is_start, 1.0, np.clip((g - a) / span, 0.0, 1.0))[:, None]
    va, vb = prev_v[interval], vals[interval]
    out = va + (vb - va) * w
    out = np.where(w == 1.0, vb, out)  # exact sample values on sample times
    if cfg.gap_policy == "flag":
        gap = ((b - a) > cfg.max_gap_s) & ~is_start & (g > a) & (g < b)
        out = np.concatenate([out, gap[:, None].astype(np.float64)], axis=1)
    return g, out.astype(np.float32), first


# --------------------------------------------------------------------------------------------
# The streaming featurizer
# --------------------------------------------------------------------------------------------


class SensorFeaturizer:
    """Streaming grid resampler for a :class:`SensorConfig`; offline is one ``step`` from the initial state.

    State (the *carry*): float64 ``[3 + C]``: has-previous flag, last timestamp, pending-segment-start
    flag, last row. A plain array, so runtimes can snapshot it.
    """

    def __init__(self, config: SensorConfig | FeatureConfig):
        cfg = _sensor_config(config)
        cfg.validate()
        self.cfg = cfg
        self.n_channels = len(cfg.columns)
        self.dim = cfg.dim

    def initial_state(self) -> np.ndarray:
        """Nothing seen yet: float64 zeros ``[3 + C]``."""
        return np.zeros(_ROW + self.n_channels, dtype=np.float64)

    def _check_carry(self, carry: np.ndarray) -> np.ndarray:
        carry = np.asarray(carry)
        if carry.dtype != np.float64 or carry.shape != (_ROW + self.n_channels,):
            raise StateError(
                f"sensor carry must be float64 [{_ROW + self.n_channels}] (flags, last time, last row of "
                f"{self.n_channels} channels), got {carry.dtype} {list(carry.shape)}"
            )
        return carry

    def step(self, timestamps: np.ndarray, values: np.ndarray, carry: np.ndarray) -> tuple[SensorFrames, np.ndarray]:
        """Consume samples ``timestamps [N]`` (float seconds, strictly increasing, also across chunks) and
        ``values [N, C]``; returns this step's :class:`SensorFrames` and the new carry (``N = 0`` allowed).

        Raises:
            TimestampError, NonNumericError, ShapeError: see :func:`validate_chunk`. StateError: bad carry.
        """
        carry = self._check_carry(carry)
        has_prev = carry[_HAS_PREV] != 0.0
        ts, vals = validate_chunk(
            timestamps, values, self.n_channels, float(carry[_LAST_T]) if has_prev else None
        )
        if ts.size == 0:
            return self._empty(), carry.copy()
        prev_t = np.empty_like(ts)
        prev_v = np.empty_like(vals)
        prev_t[1:], prev_v[1:] = ts[:-1], vals[:-1]
        prev_t[0] = carry[_LAST_T]
        prev_v[0] = carry[_ROW:]
        long_gap = (ts - prev_t) > self.cfg.max_gap_s
        if not has_prev:
            long_gap[0] = False
        starts = long_gap.copy() if self.cfg.gap_policy == "split" else np.zeros_like(long_gap)
        if not has_prev:
            starts[0] = True
        times, frames, first = grid_frames(prev_t, prev_v, ts, vals, starts, self.cfg)
        total = times.shape[0]
        seg = set(first[long_gap & starts].tolist()) if self.cfg.gap_policy == "split" else set()
        if carry[_PENDING] != 0.0:
            seg.add(0)
        pending = total in seg
        seg.discard(total)
        new_carry = np.empty_like(carry)
        new_carry[_HAS_PREV] = 1.0
        new_carry[_LAST_T] = ts[-1]
        new_carry[_PENDING] = 1.0 if pending else 0.0
        new_carry[_ROW:] = vals[-1]
        if self.cfg.time_features:
            frames = np.concatenate((frames, time_features(times, self.cfg.time_features)), axis=1)
        return SensorFrames(times, frames, tuple(sorted(seg))), new_carry

    def featurize(self, timestamps: np.ndarray, values: np.ndarray) -> SensorFrames:
        """Offline frames of a whole series: one :meth:`step` from the initial state."""
        return self.step(timestamps, values, self.initial_state())[0]

    def segments(self, timestamps: np.ndarray, values: np.ndarray) -> list[Segment]:
        """Offline frames split at long gaps (policy "split"; one segment under "flag"); empty segments dropped."""
        return split_segments(self.featurize(timestamps, values))

    def _empty(self) -> SensorFrames:
        return SensorFrames(np.zeros(0, np.float64), np.zeros((0, self.dim), np.float32), ())


def time_features(times: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """Calendar covariates of grid times ``[T]`` (seconds since the epoch, UTC) -> float32 ``[T, 2 * len(names)]``.

    Each name (see :data:`rnnstream.pipeline.config.TIME_FEATURES`) gives ``sin`` and ``cos`` of its phase. The Unix
    epoch fell on a Thursday, so ``day_of_week`` is shifted by three days to start its cycle on Monday.
    """
    cols = []
    for name in names:
        period = TIME_FEATURES[name]
        shift = 3 * 86400.0 if name == "day_of_week" else 0.0
        phase = 2.0 * np.pi * np.mod(np.asarray(times, np.float64) + shift, period) / period
        cols += [np.sin(phase), np.cos(phase)]
    return np.stack(cols, axis=1).astype(np.float32) if cols else np.zeros((len(times), 0), np.float32)


def split_segments(frames: SensorFrames) -> list[Segment]:
    """Cut ``frames`` at its ``segment_starts`` into :class:`Segment` s (non-empty ones only)."""
    bounds = [0, *frames.segment_starts, len(frames)]
    return [
        Segment(frames.times[a:b], frames.values[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a
    ]


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

TABLE_EXTENSIONS = (".csv", ".parquet", ".pq")


def _plain(value: object) -> object:
    """NumPy/pandas scalars as plain Python values, so messages read ``1.0``, not ``np.float64(1.0)``."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def _read_frame(path: str):
    require("pandas", "tables", "reading sensor tables")
    require("pyarrow", "tables", "reading sensor tables")
    import pandas as pd
    import pyarrow as pa

    ext = os.path.splitext(path)[1].lower()
    if ext not in TABLE_EXTENSIONS:
        raise SensorError(f"{path}: unsupported sensor table format {ext!r}; expected one of {', '.join(TABLE_EXTENSIONS)}")
    if os.path.getsize(path) == 0:
        raise SensorError(f"{path}: the file is empty (0 bytes); expected a {ext[1:]} table with a header")
    try:
        if ext == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, pa.ArrowException, OSError) as exc:
        raise SensorError(f"{path}: not readable as a {ext[1:]} table ({exc})") from None


def table_timestamps(column, *, where: str, name: str) -> np.ndarray:
    """A timestamp column (numeric seconds, datetimes, or datetime strings) as float64 epoch seconds ``[N]``.

    Naive datetimes are taken as UTC. Raises :class:`TimestampError` naming a sample unparseable value.
    """
    import pandas as pd

    if pd.api.types.is_bool_dtype(column):
        raise TimestampError(f"{where}: timestamp column {name!r} holds booleans; expected seconds or datetimes")
    if pd.api.types.is_numeric_dtype(column):
        secs = column.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        if pd.api.types.is_datetime64_any_dtype(column):
            parsed = column
        else:
            parsed = pd.to_datetime(column, utc=True, errors="coerce")
            bad = parsed.isna() & column.notna()
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise TimestampError(
                    f"{where}: timestamp column {name!r} value {_plain(column.iloc[row])!r} at row {row} is neither "
                    f"numeric seconds nor a datetime ({int(bad.sum())} such rows)"
                )
        if getattr(parsed.dt, "tz", None) is None:
            parsed = parsed.dt.tz_localize("UTC")
        secs = ((parsed - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64, na_value=np.nan)
    missing = np.flatnonzero(~np.isfinite(secs))
    if missing.size:
        raise TimestampError(
            f"{where}: timestamp column {name!r} is missing or not finite at row(s) {missing[:5].tolist()}"
        )
    return secs


def read_sensor_table(path: str | os.PathLike[str], cfg: SensorConfig | FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """Read a CSV or Parquet sensor table: ``(timestamps [N] float64 seconds, values [N, C] float32)``.

    Columns are ``cfg.timestamp_column`` and ``cfg.columns`` (in that order in ``values``; other columns are
    ignored). Timestamps are numeric seconds or datetimes (strings or typed; naive ones are UTC) and must
    strictly increase.

    Raises:
        SensorError: unknown extension, empty or unreadable file, no rows.
        MissingColumnsError: names the missing columns and the ones present.
        NonNumericError: a channel column with a non-numeric or missing value (names column, row, value).
        TimestampError: unparseable, non-monotonic or duplicate timestamps (names the rows).
    """
    import pandas as pd

    sensor = _sensor_config(cfg)
    where = os.fspath(path)
    table = _read_frame(where)
    wanted = [sensor.timestamp_column, *sensor.columns]
    present = [str(c) for c in table.columns]
    missing = [c for c in wanted if c not in present]
    if missing:
        raise MissingColumnsError(f"{where}: missing column(s) {missing}; the table has {present}")
    if len(table) == 0:
        raise SensorError(f"{where}: the table has no rows; expected at least one reading")
    ts = table_timestamps(table[sensor.timestamp_column], where=where, name=sensor.timestamp_column)
    values = np.empty((len(table), len(sensor.columns)), dtype=np.float32)
    for j, col in enumerate(sensor.columns):
        raw = table[col]
        if pd.api.types.is_bool_dtype(raw):
            raw = raw.astype(np.float64)
        num = pd.to_numeric(raw, errors="coerce")
        bad = num.isna().to_numpy() | ~np.isfinite(num.to_numpy(dtype=np.float64, na_value=np.nan))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            value = raw.iloc[row]
            what = "a missing value" if pd.isna(value) else f"the non-numeric value {_plain(value)!r}"
            raise NonNumericError(
                f"{where}: column {col!r} has {what} at row {row} ({int(bad.sum())} bad row(s)); expected finite numbers"
            )
        values[:, j] = num.to_numpy(dtype=np.float64)
    if (found := _order_violation(ts)) is not None:
        i, repeat, bad = found
        stamps, how = table[sensor.timestamp_column], "duplicates" if repeat else "is earlier than"
        raise TimestampError(f"{where}: timestamp at row {i} ({_plain(stamps.iloc[i])!r}) "
                             f"{how} row {i - 1} ({_plain(stamps.iloc[i - 1])!r}); expected "
                             "strictly increasing times "
                             f"({bad.size} violation(s), rows {bad[:5].tolist()})")
    return ts, values

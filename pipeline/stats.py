"""Per-dimension feature statistics that merge exactly, and the normalization they define.

:class:`RunningStats` holds ``count``, ``mean`` and ``m2`` (sum of squared deviations) per dimension in
float64 and merges two partial results with Chan et al.'s parallel formula, so statistics computed
over any split of the data (Beam bundles, workers, files) equal those over all of it up to float
rounding. It is a ready Beam ``CombineFn`` accumulator::

    create_accumulator   -> RunningStats.empty(dim)
    add_input(acc, x)    -> acc.update(x)            # in place, returns acc
    merge_accumulators   -> RunningStats.merge_all(accs)
    extract_output(acc)  -> acc                      # or acc.to_dict()

The statistics are written as ``stats.json`` (:meth:`RunningStats.save`) and baked into models as
``(x - mean) / std`` (:class:`Normalizer`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rnnstream.pipeline.errors import DatasetError, ShapeError

#: ``std`` never goes below this, so constant dimensions normalize to 0 instead of dividing by 0.
STD_FLOOR = 1e-8
STATS_VERSION = 1


class RunningStats:
    """Mergeable count / mean / population variance per dimension (float64).

    Attributes:
        count: number of rows seen (int).
        mean: ``[D]`` float64 mean.
        m2: ``[D]`` float64 sum of squared deviations from the mean.
    """

    __slots__ = ("count", "mean", "m2")

    def __init__(self, count: int, mean: np.ndarray, m2: np.ndarray):
        mean = np.asarray(mean, dtype=np.float64)
        m2 = np.asarray(m2, dtype=np.float64)
        if mean.ndim != 1 or m2.shape != mean.shape:
            raise ShapeError(f"stats mean and m2 must both be [D], got {list(mean.shape)} and {list(m2.shape)}")
        if count < 0:
            raise DatasetError(f"stats count must be >= 0, got {count}")
        self.count = int(count)
        self.mean = mean
        self.m2 = m2

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def empty(cls, dim: int) -> "RunningStats":
        """No rows yet: ``count = 0``, ``mean = m2 = zeros([dim])``."""
        if dim <= 0:
            raise ShapeError(f"stats dimension must be > 0, got {dim}")
        return cls(0, np.zeros(dim), np.zeros(dim))

    @classmethod
    def of(cls, x: np.ndarray) -> "RunningStats":
        """Statistics of the rows of ``x`` ``[N, D]`` (two-pass, float64)."""
        x = _rows(x)
        stats = cls.empty(x.shape[1])
        return stats.update(x)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    # -- accumulation -------------------------------------------------------------------------
    def update(self, x: np.ndarray) -> "RunningStats":
        """Add the rows of ``x`` ``[N, D]`` (or one row ``[D]``) in place; returns ``self``.

        Raises:
            ShapeError: ``D`` differs from :attr:`dim`.
            DatasetError: ``x`` holds NaN or Inf.
        """
        x = _rows(x, self.dim)
        if x.shape[0] == 0:
            return self
        if not np.isfinite(x).all():
            raise DatasetError(f"stats input holds {int((~np.isfinite(x)).sum())} NaN/Inf values; expected finite features")
        n = x.shape[0]
        mean = x.mean(axis=0)
        dev = x - mean
        m2 = np.einsum("nd,nd->d", dev, dev)
        self.count, self.mean, self.m2 = _chan(self.count, self.mean, self.m2, n, mean, m2)
        return self

    def merge(self, other: "RunningStats") -> "RunningStats":
        """A new :class:`RunningStats` of both inputs' rows (Chan et al.); neither input changes.

        Raises:
            ShapeError: the dimensions differ.
        """
        if not isinstance(other, RunningStats):
            raise ShapeError(f"can only merge RunningStats, got {type(other).__name__}")
        if other.dim != self.dim:
            raise ShapeError(f"cannot merge stats of dimension {self.dim} with stats of dimension {other.dim}")
        return RunningStats(*_chan(self.count, self.mean, self.m2, other.count, other.mean, other.m2))

    @classmethod
    def merge_all(cls, parts: Iterable["RunningStats"]) -> "RunningStats":
        """Merge any number of partial statistics (at least one)."""
        parts = list(parts)
        if not parts:
            raise DatasetError("merge_all needs at least one RunningStats")
        out = parts[0].copy()
        for part in parts[1:]:
            out = out.merge(part)
        return out

    def copy(self) -> "RunningStats":
        return RunningStats(self.count, self.mean.copy(), self.m2.copy())

    # -- results ------------------------------------------------------------------------------
    @property
    def var(self) -> np.ndarray:
        """Population variance ``m2 / count``, ``[D]`` float64 (zeros while ``count == 0``)."""
        return self.m2 / self.count if self.count else np.zeros_like(self.m2)

    @property
    def std(self) -> np.ndarray:
        """``max(sqrt(var), STD_FLOOR)``, ``[D]`` float64: never 0, so normalizing is always defined."""
        return np.maximum(np.sqrt(self.var), STD_FLOOR)

    def __repr__(self) -> str:
        return f"RunningStats(dim={self.dim}, count={self.count})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RunningStats):
            return NotImplemented
        return (
            self.count == other.count
            and np.array_equal(self.mean, other.mean)
            and np.array_equal(self.m2, other.m2)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    # -- serialization (stats.json) ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``count``, ``mean``, ``m2`` (exact state) plus ``var``/``std`` for readers."""
        return {
            "version": STATS_VERSION,
            "dim": self.dim,
            "count": self.count,
            "mean": self.mean.tolist(),
            "m2": self.m2.tolist(),
            "var": self.var.tolist(),
            "std": self.std.tolist(),
            "std_floor": STD_FLOOR,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "stats") -> "RunningStats":
        """Inverse of :meth:`to_dict` (floats round-trip exactly through JSON).

        Raises:
            DatasetError: not a stats object, or keys missing. ShapeError: ``mean``/``m2`` lengths differ
            from each other or from ``dim``.
        """
        if not isinstance(data, dict):
            raise DatasetError(f"{where}: expected a JSON object with count/mean/m2, got {type(data).__name__}")
        missing = [key for key in ("count", "mean", "m2") if key not in data]
        if missing:
            raise DatasetError(f"{where}: missing keys {missing}; present: {sorted(data)}")
        if data.get("version", STATS_VERSION) != STATS_VERSION:
            raise DatasetError(f"{where}: stats version {data['version']} is not supported (expected {STATS_VERSION})")
        try:
            mean = np.asarray(data["mean"], dtype=np.float64)
            m2 = np.asarray(data["m2"], dtype=np.float64)
            count = int(data["count"])
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{where}: count/mean/m2 must be a number and lists of numbers ({exc})") from None
        if mean.ndim != 1 or mean.shape != m2.shape or ("dim" in data and mean.shape[0] != data["dim"]):
            raise ShapeError(
                f"{where}: mean has shape {list(mean.shape)}, m2 {list(m2.shape)}, dim {data.get('dim')}; "
                "expected two lists of length dim"
            )
        return cls(count, mean, m2)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str, *, where: str = "stats") -> "RunningStats":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: not valid JSON ({exc})") from None
        return cls.from_dict(data, where=where)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``stats.json``."""
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "RunningStats":
        """Read a ``stats.json`` written by :meth:`save`; errors name the file."""
        with open(path, encoding="utf-8") as fh:
            return cls.from_json(fh.read(), where=os.fspath(path))


def _rows(x: np.ndarray, dim: int | None = None) -> np.ndarray:
    """``x`` as float64 ``[N, D]`` (a 1-D ``[D]`` is one row); checks ``D == dim`` when given."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ShapeError(f"stats input must be [N, D] or [D], got shape {list(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ShapeError(f"stats input has {x.shape[1]} dimensions, expected {dim}")
    return x


def _chan(
    n_a: int, mean_a: np.ndarray, m2_a: np.ndarray, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray
) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan, Golub & LeVeque's pairwise merge of (count, mean ``[D]``, m2 ``[D]``)."""
    if n_b == 0:
        return n_a, mean_a.copy(), m2_a.copy()
    if n_a == 0:
        return n_b, mean_b.copy(), m2_b.copy()
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + delta * delta * (n_a * n_b / n)
    return n, mean, m2


# --------------------------------------------------------------------------------------------
# Normalization
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Normalizer:
    """``(x - mean) / std`` per dimension, float32, as models bake it in.

    Attributes:
        mean, std: ``[D]`` float32 (``std >= STD_FLOOR``).
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def from_stats(cls, stats: RunningStats) -> "Normalizer":
        """Raises :class:`DatasetError` for statistics of no rows."""
        if stats.count == 0:
            raise DatasetError("cannot normalize with statistics of 0 rows; expected stats of a non-empty dataset")
        return cls(stats.mean.astype(np.float32), stats.std.astype(np.float32))

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``x [..., D] -> [..., D]`` float32. Raises :class:`ShapeError` when the last axis is not ``D``."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise ShapeError(f"cannot normalize shape {list(x.shape)}: expected the last axis to be {self.dim}")
        return (x - self.mean) / self.std


def normalize(x: np.ndarray, stats: RunningStats) -> np.ndarray:
    """``(x - stats.mean) / stats.std`` for ``x [..., D]``, float32 (see :class:`Normalizer`)."""
    return Normalizer.from_stats(stats)(x)

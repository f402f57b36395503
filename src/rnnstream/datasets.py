"""Real data sets for the demo and the experiments: where they are and how they become featurizer input.

Three sources, none of them copied into the repository:

* **aeon's embedded UEA sets** (``aeon/datasets/data/`` inside the installed package): BasicMotions
  (smart-watch accelerometer + gyroscope, 6 channels at 10 Hz, 4 activities, 40/40) and JapaneseVowels
  (12 LPC-cepstrum channels of real speech, 7-29 frames, 9 speakers, 270/370). They are read with
  ``aeon.datasets.load_from_ts_file`` from the shipped ``.ts`` files (never downloaded) and written as
  *sensor tables* (CSV, a ``timestamp`` column in seconds at the series' rate plus one column per channel),
  which is what the Beam featurize job reads.
* **FSDD** (``<data-root>/fsdd/recordings``): 2,000 spoken-digit WAVs named ``{digit}_{speaker}_{take}.wav``.
* **ETTh1** (``<data-root>/ett/ETTh1.csv``): hourly transformer readings, one long sensor table.

``<data-root>`` defaults to ``../shared/data`` relative to the repository root (:func:`default_data_root`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.errors import DatasetError

#: Channel names of the embedded UEA sets, in the ``.ts`` files' dimension order.
UEA_CHANNELS: dict[str, tuple[str, ...]] = {
    "BasicMotions": ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"),
    "JapaneseVowels": tuple(f"lpc{i}" for i in range(12)),
}
#: Sampling rate of each set's frames (Hz). BasicMotions: 10 Hz (its ``.ts`` header: "sampled once every
#: tenth of a second"). JapaneseVowels: LPC frames a few milliseconds apart (the UCI description gives a 6.4 ms
#: shift); its tables use a nominal 160 Hz (6.25 ms) because ``k / 156.25`` is not exactly on the sensor
#: featurizer's float grid for every ``k`` (``floor((k / r) * r) == k`` holds for r = 10 and 160, not 156.25).
UEA_RATES: dict[str, float] = {"BasicMotions": 10.0, "JapaneseVowels": 160.0}

#: File names the sensor tables get, and the label pattern that parses them back (``featurize --label-pattern``).
TABLE_NAME = "{label}_{split}_{index:04d}.csv"
TABLE_PATTERN = r"(?P<label>[^_/]+)_(?P<split>train|test)_(?P<index>\d+)\.csv"

#: FSDD file names: ``{digit}_{speaker}_{take}.wav``.
FSDD_PATTERN = r"(?P<label>\d)_(?P<speaker>[a-z]+)_(?P<take>\d+)\.wav"
FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas")

#: ETTh1: columns in file order; ``OT`` (oil temperature) is the forecast target.
ETT_COLUMNS = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
#: The Informer protocol's row ranges (12/4/4 months of hours).
ETT_SPLITS = {"train": (0, 8640), "val": (8640, 11520), "test": (11520, 14400)}


def repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_data_root() -> str:
    """``../shared/data`` relative to the repository root."""
    return os.path.normpath(os.path.join(repo_root(), "..", "shared", "data"))


def aeon_data_dir() -> str:
    """The ``datasets/data`` folder of the installed aeon package (imports aeon lazily)."""
    try:
        import aeon
    except ImportError as exc:
        raise DatasetError(f"the embedded data sets need the 'aeon' package ({exc}); pip install aeon") from None
    return os.path.join(os.path.dirname(aeon.__file__), "datasets", "data")


@dataclass(frozen=True)
class LabelledSeries:
    """One recorded series: ``values [T, C]`` float32 and its label."""

    values: np.ndarray
    label: str


def load_uea(name: str, split: str) -> list[LabelledSeries]:
    """The ``split`` (``"train"``/``"test"``) of an embedded UEA set as ``[T, C]`` series with labels.

    Reads the ``.ts`` file shipped inside aeon with ``load_from_ts_file``; never downloads.
    """
    if split not in ("train", "test"):
        raise DatasetError(f"split must be 'train' or 'test', got {split!r}")
    path = os.path.join(aeon_data_dir(), name, f"{name}_{split.upper()}.ts")
    if not os.path.exists(path):
        raise DatasetError(f"aeon ships no {name} {split} file at {path}; known sets: {sorted(UEA_CHANNELS)}")
    from aeon.datasets import load_from_ts_file

    X, y = load_from_ts_file(path)
    out = []
    for x, label in zip(X, y):
        arr = np.asarray(x, dtype=np.float32).T  # [C, T] -> [T, C]
        out.append(LabelledSeries(np.ascontiguousarray(arr), str(label)))
    return out


def uea_feature_config(name: str) -> FeatureConfig:
    """Sensor feature config of an embedded set: its channels at its rate, no gaps."""
    if name not in UEA_CHANNELS:
        raise DatasetError(f"unknown embedded set {name!r}; known: {sorted(UEA_CHANNELS)}")
    rate = UEA_RATES[name]
    return FeatureConfig.sensor_default(UEA_CHANNELS[name], rate_hz=rate, max_gap_s=2.0 / rate, gap_policy="split")


def grid_timestamps(n: int, rate_hz: float) -> np.ndarray:
    """``n`` timestamps (seconds) exactly on the grid ``k / rate_hz``, starting at 0."""
    return np.arange(n, dtype=np.float64) / float(rate_hz)


def write_sensor_table(path: str, values: np.ndarray, columns: Sequence[str], rate_hz: float,
                       timestamp_column: str = "timestamp") -> str:
    """Write ``values [T, C]`` as a CSV sensor table with a timestamp column at ``rate_hz``."""
    import pandas as pd

    values = np.asarray(values)
    if values.ndim != 2 or values.shape[1] != len(columns):
        raise DatasetError(f"values must be [T, {len(columns)}], got {list(values.shape)}")
    frame = pd.DataFrame(values.astype(np.float64), columns=list(columns))
    # repr() round-trips the float64 timestamps exactly; 9 significant digits round-trip float32 values.
    frame.insert(0, timestamp_column, [repr(float(t)) for t in grid_timestamps(values.shape[0], rate_hz)])
    frame.to_csv(path, index=False, float_format="%.9g")
    return path


def write_uea_tables(name: str, out_dir: str, splits: Sequence[str] = ("train", "test"),
                     limit: int | None = None) -> dict[str, list[str]]:
    """Write an embedded set as sensor tables ``out_dir/{label}_{split}_{index}.csv`` (see :data:`TABLE_PATTERN`).

    ``limit`` keeps the first ``limit`` series of each class per split (for smoke tests). Returns the
    paths written per split.
    """
    cfg = uea_feature_config(name)
    os.makedirs(out_dir, exist_ok=True)
    written: dict[str, list[str]] = {}
    for split in splits:
        per_class: dict[str, int] = {}
        paths = []
        for i, s in enumerate(load_uea(name, split)):
            if limit is not None and per_class.get(s.label, 0) >= limit:
                continue
            per_class[s.label] = per_class.get(s.label, 0) + 1
            path = os.path.join(out_dir, TABLE_NAME.format(label=s.label, split=split, index=i))
            paths.append(write_sensor_table(path, s.values, cfg.sensor.columns, cfg.sensor.rate_hz))  # type: ignore[union-attr]
        written[split] = paths
    return written


def fsdd_dir(data_root: str | None = None) -> str:
    return os.path.join(data_root or default_data_root(), "fsdd", "recordings")


def fsdd_files(data_root: str | None = None) -> list[str]:
    """Sorted FSDD WAV paths; :class:`DatasetError` naming the folder when absent."""
    root = fsdd_dir(data_root)
    if not os.path.isdir(root):
        raise DatasetError(f"FSDD recordings not found at {root}; pass --data-root pointing at the shared data folder")
    files = sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith(".wav"))
    if not files:
        raise DatasetError(f"no .wav files in {root}")
    return files


def etth1_path(data_root: str | None = None) -> str:
    path = os.path.join(data_root or default_data_root(), "ett", "ETTh1.csv")
    if not os.path.exists(path):
        raise DatasetError(f"ETTh1.csv not found at {path}; pass --data-root pointing at the shared data folder")
    return path


def ett_feature_config(columns: Sequence[str] = ETT_COLUMNS) -> FeatureConfig:
    """ETTh1 as a sensor table: the ``date`` column, one frame per hour."""
    return FeatureConfig.sensor_default(tuple(columns), timestamp_column="date", rate_hz=1.0 / 3600.0,
                                        max_gap_s=2 * 3600.0, gap_policy="split")


def missing_reason(path: str) -> str | None:
    """``None`` when ``path`` exists, else a one-line reason to skip."""
    return None if os.path.exists(path) else f"{path} is absent (shared data not mounted here)"

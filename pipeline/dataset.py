"""The featurized dataset on disk: what ``rnnstream featurize`` writes and ``rnnstream train`` reads.

A dataset is a directory::

    DIR/
      feature_config.json     the FeatureConfig every frame was computed with
      stats.json              full-pass RunningStats of all frames (per feature dimension)
      examples-*.parquet      one row per example, schema PARQUET_SCHEMA
      dead_letter.jsonl       one {"path", "reason", "kind"} object per failed input
      summary.json            {"inputs", "outputs", "dead_letters"}

Row columns: ``id`` (unique string), ``path`` (source file), ``label`` (string or null), ``metadata``
(JSON object as a string, e.g. ``{"speaker": "george"}``), ``n_frames``, ``dim``, ``features``
(float32, ``n_frames * dim`` values, row-major ``[n_frames, dim]``).
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.errors import DatasetError, MissingExtraError

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:  # the runtime-only install reads no Parquet
    raise MissingExtraError("featurized datasets (Parquet) need pyarrow: pip install 'rnnstream[tables]'") from None

FEATURE_CONFIG_FILE = "feature_config.json"
STATS_FILE = "stats.json"
DEAD_LETTER_FILE = "dead_letter.jsonl"
SUMMARY_FILE = "summary.json"
SHARD_PREFIX = "examples"

PARQUET_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("path", pa.string()),
        ("label", pa.string()),
        ("metadata", pa.string()),
        ("n_frames", pa.int64()),
        ("dim", pa.int32()),
        ("features", pa.list_(pa.float32())),
    ]
)


@dataclass(frozen=True)
class Example:
    """One featurized example: ``features`` is float32 ``[n_frames, dim]``."""

    id: str
    path: str
    features: np.ndarray
    label: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        """The Parquet row (a plain dict matching :data:`PARQUET_SCHEMA`)."""
        feats = np.asarray(self.features, dtype=np.float32)
        if feats.ndim != 2:
            raise DatasetError(f"example {self.id!r}: features must be [n_frames, dim], got shape {list(feats.shape)}")
        return {
            "id": self.id,
            "path": self.path,
            "label": self.label,
            "metadata": json.dumps(self.metadata, sort_keys=True),
            "n_frames": int(feats.shape[0]),
            "dim": int(feats.shape[1]),
            "features": feats.reshape(-1).tolist(),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Example":
        n, d = int(row["n_frames"]), int(row["dim"])
        feats = np.asarray(row["features"], dtype=np.float32)
        if feats.size != n * d:
            raise DatasetError(f"example {row['id']!r}: {feats.size} feature values, expected n_frames*dim = {n}*{d}")
        return cls(
            id=row["id"],
            path=row["path"],
            features=feats.reshape(n, d),
            label=row["label"],
            metadata=json.loads(row["metadata"] or "{}"),
        )


@dataclass
class FeatureDataset:
    """A loaded dataset: config, statistics (``rnnstream.pipeline.stats.RunningStats``) and examples."""

    config: FeatureConfig
    stats: Any
    examples: list[Example]
    root: str = ""

    @property
    def labels(self) -> list[str]:
        """Sorted distinct labels (examples without one are skipped)."""
        return sorted({e.label for e in self.examples if e.label is not None})


def shard_paths(root: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, f"{SHARD_PREFIX}*.parquet")))


def read_dataset(root: str) -> FeatureDataset:
    """Load a dataset directory; raises :class:`DatasetError` naming what is missing or empty."""
    from rnnstream.pipeline.stats import RunningStats

    if not os.path.isdir(root):
        raise DatasetError(f"dataset directory {root!r} does not exist")
    cfg_path = os.path.join(root, FEATURE_CONFIG_FILE)
    stats_path = os.path.join(root, STATS_FILE)
    for p in (cfg_path, stats_path):
        if not os.path.exists(p):
            raise DatasetError(f"dataset {root!r} has no {os.path.basename(p)}; is it the output of `rnnstream featurize`?")
    shards = shard_paths(root)
    if not shards:
        raise DatasetError(f"dataset {root!r} has no {SHARD_PREFIX}*.parquet shards")
    examples = [Example.from_row(row) for shard in shards for row in pq.read_table(shard, schema=PARQUET_SCHEMA).to_pylist()]
    if not examples:
        raise DatasetError(f"dataset {root!r} holds no examples ({len(shards)} shard(s), all empty)")
    config = FeatureConfig.load(cfg_path)
    for e in examples:
        if e.features.shape[1] != config.dim:
            raise DatasetError(
                f"example {e.id!r} has feature dimension {e.features.shape[1]}, but the dataset's config says {config.dim}"
            )
    return FeatureDataset(config=config, stats=RunningStats.load(stats_path), examples=examples, root=root)


def write_dataset(root: str, examples: list[Example], config: FeatureConfig, stats: Any | None = None) -> str:
    """Write a dataset without Beam (tests, small tools): one shard, config, and stats (computed if None)."""
    from rnnstream.pipeline.stats import RunningStats

    os.makedirs(root, exist_ok=True)
    if stats is None:
        stats = RunningStats.empty(config.dim)
        for e in examples:
            stats.update(e.features)
    config.save(os.path.join(root, FEATURE_CONFIG_FILE))
    stats.save(os.path.join(root, STATS_FILE))
    table = pa.Table.from_pylist([e.to_row() for e in examples], schema=PARQUET_SCHEMA)
    pq.write_table(table, os.path.join(root, f"{SHARD_PREFIX}-00000-of-00001.parquet"))
    return root

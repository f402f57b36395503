"""How the featurize job splits its inputs into shards: one Beam element (a :class:`ShardTask`) per Parquet
shard, planned on the submitting machine, sized from the corpus and the runner's workers."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions
from rnnstream.beam_jobs.common import InputRecord, is_dask_runner
from rnnstream.beam_jobs.options import INPUTS_PER_SHARD, MAX_DEFAULT_SHARDS, SHARDS_PER_WORKER
from rnnstream.pipeline.errors import ConfigError


def default_num_shards(n_inputs: int, min_shards: int = 1, inputs_per_shard: int | None = None) -> int:
    """Shards for ``n_inputs`` inputs: one per ``inputs_per_shard`` (default :data:`INPUTS_PER_SHARD`), at
    least ``min_shards`` (:func:`min_shards`: enough tasks for every parallel worker), at most
    ``max(MAX_DEFAULT_SHARDS, min_shards)`` and at most ``n_inputs``; always >= 1.

    Raises:
        ConfigError: ``inputs_per_shard < 1``.
    """
    per = INPUTS_PER_SHARD if inputs_per_shard is None else inputs_per_shard
    if per < 1:
        raise ConfigError(f"--inputs-per-shard must be >= 1, got {per}")
    wanted = max(math.ceil(n_inputs / per), min_shards)
    return max(1, min(wanted, max(MAX_DEFAULT_SHARDS, min_shards), n_inputs))


def min_shards(options: PipelineOptions | None) -> int:
    """The fewest shards that keep every parallel worker the options ask for busy until the end:
    :data:`SHARDS_PER_WORKER` per DirectRunner worker when ``--direct_num_workers`` > 1 (0: every core),
    one per partition on the DaskRunner (``--dask_npartitions``: already a few per worker), else 1."""
    if options is None:
        return 1
    if is_dask_runner(options):
        try:  # registers --dask_npartitions (DaskOptions is defined beside the runner)
            import apache_beam.runners.dask.dask_runner  # noqa: F401
        except ImportError:
            return 1
        return max(1, int(options.get_all_options().get("npartitions") or 1))  # --dask_npartitions
    from apache_beam.options.pipeline_options import DirectOptions

    n = options.view_as(DirectOptions).direct_num_workers
    workers = max(1, os.cpu_count() or 1) if n == 0 else max(1, int(n or 1))
    return 1 if workers == 1 else SHARDS_PER_WORKER * workers


class ShardTask:
    """One Parquet shard's work: its index and the input records it featurizes (:attr:`records`).

    Held compactly: the paths' common prefix and the rest of each path joined by NUL, labels and metadata only
    when some record has them. The planned tasks are pickled into the pipeline at submission (Beam's ``Create``,
    bz2-compressed several times); one record object per file made that 2.8x larger and 7x slower to pickle
    (32,000 files: 0.22 s per pickling, serial, before any worker starts).
    """

    __slots__ = ("index", "_prefix", "_names", "_labels", "_metadata", "_n")

    def __init__(self, index: int, records: Sequence[InputRecord]):
        paths = [r.path for r in records]
        prefix = _dir_prefix(paths)
        self.index = index
        self._prefix = prefix
        rest = [p[len(prefix):] for p in paths]
        self._names: str | tuple[str, ...] = tuple(rest) if any("\0" in p for p in rest) else "\0".join(rest)
        labels = tuple(r.label for r in records)
        self._labels = labels if any(label is not None for label in labels) else None
        metadata = tuple(r.metadata for r in records)
        self._metadata = metadata if any(metadata) else None
        self._n = len(paths)

    @property
    def records(self) -> tuple[InputRecord, ...]:
        """The input records, in the order given."""
        if not self._n:
            return ()
        names = self._names if isinstance(self._names, tuple) else self._names.split("\0")
        labels = self._labels or (None,) * self._n
        metadata = self._metadata or tuple({} for _ in range(self._n))
        return tuple(InputRecord(self._prefix + name, label, dict(meta))
                     for name, label, meta in zip(names, labels, metadata))

    def __len__(self) -> int:
        return self._n

    def _fields(self) -> tuple[Any, ...]:
        return (self.index, self._prefix, self._names, self._labels, self._metadata, self._n)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_task, self._fields())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ShardTask) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((self.index, self._prefix, self._names, self._n))

    def __repr__(self) -> str:
        return f"ShardTask(index={self.index}, records=<{self._n} under {self._prefix!r}>)"

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        """A cheap deterministic token (dask otherwise pickles every task of a ``Create`` to hash it)."""
        meta = json.dumps(self._metadata, sort_keys=True, default=str) if self._metadata else None
        return ("ShardTask", self.index, self._prefix, self._names, self._labels, meta)


def _rebuild_task(index: int, prefix: str, names: str | tuple[str, ...], labels: tuple[str | None, ...] | None,
                  metadata: tuple[dict[str, Any], ...] | None, n: int) -> ShardTask:
    task = ShardTask.__new__(ShardTask)
    task.index, task._prefix, task._names, task._labels, task._metadata, task._n = index, prefix, names, labels, \
        metadata, n
    return task


def _dir_prefix(paths: Sequence[str]) -> str:
    """The longest common prefix of ``paths`` that ends with ``/`` (any scheme: ``gs://b/x/`` stays as written)."""
    if not paths:
        return ""
    common = os.path.commonprefix(list(paths))
    return common[: common.rfind("/") + 1]


def plan_shards(records: Sequence[InputRecord], num_shards: int) -> list[ShardTask]:
    """Deal ``records`` (sorted by path) round-robin into ``num_shards`` tasks of equal size (+-1).

    Every record lands in exactly one task; a task may be empty when ``num_shards > len(records)``
    (it writes no file). Planned on the submitting machine, so the pipeline moves ``num_shards``
    elements, not one per file.

    Raises:
        ConfigError: ``num_shards < 1``.
    """
    if num_shards < 1:
        raise ConfigError(f"num_shards must be >= 1, got {num_shards}")
    ordered = sorted(records, key=lambda r: r.path)
    return [ShardTask(index=i, records=tuple(ordered[i::num_shards])) for i in range(num_shards)]


def resolve_num_shards(n_inputs: int, num_shards: int | None, inputs_per_shard: int | None,
                       options: PipelineOptions | None) -> int:
    """``--num-shards`` when given, else :func:`default_num_shards` for the options' workers.

    Raises:
        ConfigError: ``--num-shards`` < 1 or ``--inputs-per-shard`` < 1.
    """
    if num_shards is not None:
        if num_shards < 1:
            raise ConfigError(f"--num-shards must be >= 1, got {num_shards}")
        return num_shards
    return default_num_shards(n_inputs, min_shards(options), inputs_per_shard)


def spread_tasks(options: PipelineOptions | None) -> bool:
    """Whether ``Create`` must reshuffle its tasks so that the workers share them: on every runner (a fused
    ``Create`` -> ``ParDo`` would run on one worker) but one, the DirectRunner with a single worker, where
    the shuffle is only fixed cost."""
    if options is None:
        return True
    from apache_beam.options.pipeline_options import StandardOptions

    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) or runner is None else type(runner).__name__
    direct = name in (None, "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner", "FnApiRunner")
    return not (direct and min_shards(options) == 1)


__all__ = ["ShardTask", "default_num_shards", "min_shards", "plan_shards", "resolve_num_shards", "spread_tasks"]

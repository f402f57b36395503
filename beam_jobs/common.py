"""Beam pieces shared by the batch jobs (``rnnstream featurize`` and ``rnnstream infer``).

What lives here:

* options: :class:`InputOptions` (``--input``, ``--output``, ``--manifest``, ``--label-pattern``) and
  :class:`FeatureOptions` (every :class:`~rnnstream.pipeline.config.FeatureConfig` field as a flag). They are shared
  so two jobs never register the same flag twice (Beam parses every ``PipelineOptions`` subclass at once); the
  flags themselves are declared in the light :mod:`rnnstream.beam_jobs.options`, which the fast ``--help``
  parsers of :mod:`rnnstream.beam_jobs.cli` use too.
* inputs: :func:`list_inputs` expands files, directories and globs through Beam's ``FileSystems`` (local
  paths; ``gs://``/``s3://`` when those extras are installed) and attaches labels and metadata from a
  manifest or a file-name regex.
* records: :class:`InputRecord`, :class:`DeadLetter`, :class:`ShardReport`.
* transforms: :class:`KeepType`, :class:`Gather` (everything to one place, for the files written once
  at the end), :class:`StatsCombineFn` (the exact parallel merge of :class:`~rnnstream.pipeline.stats.RunningStats`)
  and :func:`write_shard` (one Parquet shard + its partial statistics).
* running: :func:`run_pipeline` (runner aliases, Dask client cleanup, Beam metrics read back).

Runner portability
------------------
The graphs are built so that they run unchanged on the DirectRunner (in memory or multi-processing),
Dataflow, Flink, Spark and Beam's ``DaskRunner``. The DaskRunner of Beam 2.77 is a prototype with three
limits that shape the jobs (each checked on this machine):

1. it computes only the *last* transform of the pipeline, so every output must feed one final step
   through main inputs (the jobs end in :class:`Gather` + a finalize ``DoFn``);
2. a multi-output ``ParDo`` hands *all* its outputs to every consumer, so each tagged branch starts with
   :class:`KeepType`, which keeps the branch's own record type (a no-op on other runners);
3. side inputs are recomputed from scratch for every consumer, and Beam's file sinks (``WriteToText``,
   ``WriteToParquet``) reach their output only through side inputs, so on Dask they would featurize the
   corpus twice and their writes are not the last step. The jobs therefore write their Parquet shards
   with :func:`write_shard` (pyarrow through ``FileSystems.create``, Beam's shard naming), which gives
   the files ``WriteToParquet(DIR/examples, file_name_suffix='.parquet')`` would.

4. what a ``DoFn`` emits in ``finish_bundle`` is dropped (outputs are collected before it runs), which
   loses the last batch of ``BatchElements``; ``rnnstream infer`` batches before ``RunInference``.

Also: ``DaskRunnerResult.metrics()`` is not implemented, so summaries are computed from the data in the
pipeline, not from metrics (metrics are still counted, for runners that report them).

Running elsewhere
-----------------
Every Beam option passes through the CLI; ``docs/runners.md`` has the exact commands for the DirectRunner
(``--direct_num_workers=2 --direct_running_mode=multi_processing``), Dask (``--runner=DaskRunner
--dask_client_address=tcp://HOST:8786``, a local or multi-machine cluster), Flink (``--runner=FlinkRunner
--flink_master=HOST:8081``), Spark (``--runner=SparkRunner --spark_master_url=spark://HOST:7077``) and
Dataflow (``--runner=DataflowRunner --project --region --temp_location``), and for shipping the package
to workers (a wheel via ``--extra_package dist/rnnstream-0.1.0-py3-none-any.whl``, ``--setup_file`` with
a two-line ``setup.py``, or ``--sdk_container_image``). Inputs and outputs on ``gs://`` need
``apache-beam[gcp]``, on ``s3://`` ``apache-beam[aws]``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from rnnstream.beam_jobs.options import (  # noqa: F401 - re-exported: the jobs and tests import them from here
    BATCH_DEFAULT_RUNNER,
    DASK_RUNNER,
    add_feature_arguments,
    add_input_arguments,
    feature_config_from_options,
    resolve_runner_aliases,
)
from rnnstream.pipeline.dataset import PARQUET_SCHEMA, SUMMARY_FILE, Example
from rnnstream.pipeline.errors import (
    ConfigError,
    DatasetError,
    RnnstreamError,
)
from rnnstream.pipeline.stats import RunningStats

LOG = logging.getLogger(__name__)

#: Beam metrics namespace of every counter the jobs keep.
METRICS_NAMESPACE = "rnnstream"
#: Errors that turn one input into a dead letter (anything else is a bug and fails the job).
INPUT_ERRORS: tuple[type[BaseException], ...] = (RnnstreamError, OSError, BeamIOError)



# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


class InputOptions(PipelineOptions):
    """Where a batch job reads and writes, and where labels come from (:func:`add_input_arguments`)."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        add_input_arguments(parser)


class FeatureOptions(PipelineOptions):
    """Every :class:`FeatureConfig` field as a flag; ``--feature-config`` loads a JSON file (flags override it)."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        add_feature_arguments(parser)


def is_dask_runner(options: PipelineOptions) -> bool:
    from apache_beam.options.pipeline_options import StandardOptions

    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) else type(runner).__name__ if runner is not None else ""
    return "DaskRunner" in (name or "")


def reject_unknown_args(argv: Sequence[str]) -> None:
    """Raise :class:`ConfigError` naming flags neither Beam nor the job knows (Beam itself only warns)."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    try:  # registers DaskOptions (--dask_client_address, ...), defined beside the runner
        import apache_beam.runners.dask.dask_runner  # noqa: F401
    except ImportError:  # dask not installed: its flags are then unknown, rightly
        pass
    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)  # what PipelineOptions.get_all_options parses against
    _, unknown = parser.parse_known_args(list(argv))
    if unknown:
        raise ConfigError(f"unknown option(s) or stray argument(s) {unknown}; see --help")


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputRecord:
    """One input file and what is known about it before reading it."""

    path: str
    label: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __dask_tokenize__(self) -> tuple[str, str, str | None, str]:
        """A cheap deterministic token (dask otherwise pickles every record of a ``Create`` to hash it)."""
        return ("InputRecord", self.path, self.label, json.dumps(self.metadata, sort_keys=True, default=str))


@dataclass(frozen=True)
class DeadLetter:
    """An input that produced no output, and why: ``reason = str(error)``, ``kind = type(error).__name__``."""

    path: str
    reason: str
    kind: str

    @classmethod
    def of(cls, path: str, error: BaseException) -> "DeadLetter":
        return cls(path=path, reason=str(error), kind=type(error).__name__)

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason, "kind": self.kind}


@dataclass(frozen=True)
class ShardReport:
    """What one shard's work gave: its file (None when no record of it gave an example), the records it
    was given, the inputs that gave examples, examples, frames, and partial frame statistics."""

    path: str | None
    records: int
    inputs: int
    examples: int
    frames: int
    stats: RunningStats


def has_scheme(path: str) -> bool:
    """True for a URL-like path (``gs://``, ``s3://``...), which local checks skip."""
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", path))


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


class StatsCombineFn(beam.CombineFn):
    """Full-pass per-dimension statistics with an exact parallel merge (Chan et al., as TF Transform).

    Inputs are feature matrices ``[T, dim]`` or partial :class:`RunningStats` (from a shard writer); the
    accumulator is a :class:`RunningStats`; merging is :meth:`RunningStats.merge_all`, so any split of
    the data across bundles and workers gives the same result up to float rounding.
    """

    def __init__(self, dim: int):
        self.dim = int(dim)

    def create_accumulator(self) -> RunningStats:
        return RunningStats.empty(self.dim)

    def add_input(self, acc: RunningStats, x: Any) -> RunningStats:
        if isinstance(x, RunningStats):
            return acc.merge(x)
        return acc.update(np.asarray(x, dtype=np.float64))

    def merge_accumulators(self, accs: Iterable[RunningStats]) -> RunningStats:
        return RunningStats.merge_all(accs)

    def extract_output(self, acc: RunningStats) -> RunningStats:
        return acc


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------


class _KeepTypeFn(beam.DoFn):
    def __init__(self, types: tuple[type, ...]):
        self.types = types

    def process(self, element: Any) -> Iterator[Any]:
        if isinstance(element, self.types):
            yield element


class KeepType(beam.PTransform):
    """Keep the elements of the given type(s).

    Put at the head of each tagged branch of a multi-output ``ParDo``: on runners that split tagged
    outputs it passes everything; on Beam's DaskRunner, which hands every output to every branch, it
    keeps the branch's own records, so each element still lands in exactly one branch.
    """

    def __init__(self, *types: type, label: str | None = None):
        super().__init__(label)
        self.types = tuple(types)

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "Keep" >> beam.ParDo(_KeepTypeFn(self.types))


def examples_table(examples: Sequence[Example]) -> pa.Table:
    """A :data:`PARQUET_SCHEMA` table of ``examples``, equal to ``Table.from_pylist([e.to_row() ...])``.

    Built column-wise from the NumPy arrays (no Python float lists), which is what keeps Parquet writing
    off the profile.
    """
    feats = [np.ascontiguousarray(e.features, dtype=np.float32) for e in examples]
    for e, f in zip(examples, feats):
        if f.ndim != 2:
            raise DatasetError(f"example {e.id!r}: features must be [n_frames, dim], got shape {list(f.shape)}")
    sizes = np.array([f.size for f in feats], dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int32)
    flat = np.concatenate([f.reshape(-1) for f in feats]) if feats else np.zeros(0, np.float32)
    columns = [
        pa.array([e.id for e in examples], pa.string()),
        pa.array([e.path for e in examples], pa.string()),
        pa.array([e.label for e in examples], pa.string()),
        pa.array([json.dumps(e.metadata, sort_keys=True) for e in examples], pa.string()),
        pa.array([f.shape[0] for f in feats], pa.int64()),
        pa.array([f.shape[1] for f in feats], pa.int32()),
        pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat, pa.float32())),
    ]
    return pa.Table.from_arrays(columns, schema=PARQUET_SCHEMA)


#: ``pq.write_table`` options for example shards: dictionary encoding only for labels. Trying it on the
#: float features (pyarrow's default) costs 5x the write time and gives larger files.
PARQUET_WRITE_OPTIONS: dict[str, Any] = {"use_dictionary": ["label"]}


def write_examples_parquet(where: Any, examples: Sequence[Example]) -> None:
    """Write ``examples`` as one Parquet file (a path or a writable binary file object)."""
    pq.write_table(examples_table(examples), where, **PARQUET_WRITE_OPTIONS)


def shard_path(prefix: str, index: int, count: int, suffix: str = ".parquet") -> str:
    """``{prefix}-00003-of-00008{suffix}`` (Beam's default shard name template)."""
    return f"{prefix}-{index:05d}-of-{count:05d}{suffix}"


def shard_of(example_id: str, num_shards: int) -> int:
    """A stable shard for an id (CRC-32; Python's ``hash`` differs between worker processes)."""
    return zlib.crc32(example_id.encode("utf-8", "surrogateescape")) % num_shards  # names not UTF-8 too


def write_shard(prefix: str, index: int, count: int, examples: Sequence[Example], dim: int,
                records: int) -> ShardReport:
    """Write ``examples`` (sorted by id) as shard ``index`` of ``count`` (one row group; local paths by
    pyarrow, others through ``FileSystems``).

    ``records``: how many input records the shard was given (for the summary). Returns the shard's
    :class:`ShardReport`, with its partial statistics accumulated by :class:`StatsCombineFn` (merged
    across shards by ``CombineGlobally(StatsCombineFn)``). No examples: no file, ``path=None``.
    Rewriting a shard (a retried bundle) gives the same file.
    """
    examples = sorted(examples, key=lambda e: e.id)
    stats_fn = StatsCombineFn(dim)
    acc = stats_fn.create_accumulator()
    for e in examples:
        acc = stats_fn.add_input(acc, e.features)
    path = shard_path(prefix, index, count) if examples else None
    if path is not None and not has_scheme(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)  # as FileSystems.create does
        write_examples_parquet(path, examples)  # a local path: pyarrow's own file I/O, no Python file object
    elif path is not None:
        with FileSystems.create(path) as fh:
            write_examples_parquet(fh, examples)
    return ShardReport(
        path=path,
        records=int(records),
        examples=len(examples),
        inputs=len({e.path for e in examples}),
        frames=int(sum(e.features.shape[0] for e in examples)),
        stats=acc,
    )


class Gather(beam.PTransform):
    """Flatten the given PCollections and group all their elements under one key: ``(None, [elements])``.

    The jobs end with this and one finalize ``DoFn``, which writes the small files (dead letters, stats,
    summary). It is also what makes the DaskRunner compute every branch (see the module docstring).
    """

    def expand(self, pcolls: Sequence[beam.PCollection]) -> beam.PCollection:
        return (
            tuple(pcolls)
            | "Flatten" >> beam.Flatten()
            | "KeyAll" >> beam.Map(lambda x: (None, x))
            | "GroupAll" >> beam.GroupByKey()
        )


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def write_text(path: str, text: str) -> None:
    """Write a text file through ``FileSystems`` (local, gs://, s3://)."""
    with FileSystems.create(path) as fh:
        fh.write(text.encode("utf-8"))


def read_text(path: str) -> str:
    with FileSystems.open(path) as fh:
        return fh.read().decode("utf-8")


def write_summary(output_dir: str, summary: dict[str, Any], job: str) -> dict[str, Any]:
    """Write ``summary.json`` and enforce the accounting rule: inputs == outputs + dead letters.

    Raises :class:`DatasetError` (after writing the file, so it can be inspected) when an input was lost.
    """
    path = FileSystems.join(output_dir, SUMMARY_FILE)
    write_text(path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if summary["inputs"] != summary["outputs"] + summary["dead_letters"]:
        raise DatasetError(
            f"{job} lost inputs: {summary['inputs']} inputs but {summary['outputs']} outputs + "
            f"{summary['dead_letters']} dead letters; see {path}"
        )
    return summary


def write_jsonl(path: str, objects: Iterable[dict[str, Any]]) -> int:
    lines = [json.dumps(o, sort_keys=True) for o in objects]
    write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def prepare_output_dir(output: str, stale_patterns: Sequence[str]) -> None:
    """Create ``output`` (local) and delete files an earlier run of the job left there (``stale_patterns``).

    Only the job's own file names are deleted, so a re-run never mixes old shards with new ones.
    """
    if not has_scheme(output):
        os.makedirs(output, exist_ok=True)
    stale: list[str] = []
    for pattern in stale_patterns:
        try:
            stale += [m.path for m in FileSystems.match([FileSystems.join(output, pattern)])[0].metadata_list]
        except BeamIOError:
            continue
    if stale:
        LOG.info("removing %d file(s) of an earlier run in %s", len(stale), output)
        FileSystems.delete(stale)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def job_pipeline(options: PipelineOptions | None,
                 test_pipeline: beam.Pipeline | None = None) -> Iterator[beam.Pipeline]:
    """The pipeline a job builds and runs: ``test_pipeline``, or a new ``beam.Pipeline(options=options)`` whose local
    temporary folder (``beam-pipeline-temp*``, made when the pipeline is created) is removed when building it fails
    before it runs; Beam itself removes the folder only in ``run``."""
    if test_pipeline is not None:
        yield test_pipeline
        return
    pipeline = beam.Pipeline(options=options)
    try:
        yield pipeline
    except BaseException:
        tmp = getattr(pipeline, "local_tempdir", None)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_state_cache_mb(size_mb: int) -> None:
    """``--local-state-cache-mb``'s value: :class:`ConfigError` unless >= 0."""
    if size_mb < 0:
        raise ConfigError(f"--local-state-cache-mb must be >= 0 (0: off), got {size_mb}")


@contextlib.contextmanager
def in_memory_state_cache(size_mb: int) -> Iterator[None]:
    """While it is open, pipelines run by Beam's in-process FnApiRunner worker get an SDK state cache of ``size_mb``.

    That worker (``--direct_running_mode=in_memory``) makes its state cache from the module constant
    ``worker_handlers.STATE_CACHE_SIZE_MB`` (100 in Beam 2.77), not from ``--max_cache_memory_usage_mb``, which sizes
    the caches of SDK worker processes (0, off, by default). The cache weighs every value it stores with
    ``objsize``, which walks the globals of every loaded module on each call (0.2-0.3 ms with Beam's ~1,700
    modules): for a keyed stateful DoFn that is several calls per key and bundle. 0 turns it off, so state reads go
    to the runner's in-memory state store, as in worker processes. The constant is restored on exit; a Beam without
    it is left alone (a warning).
    """
    check_state_cache_mb(size_mb)
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    if not hasattr(worker_handlers, "STATE_CACHE_SIZE_MB"):
        LOG.warning("this Beam has no worker_handlers.STATE_CACHE_SIZE_MB: --local-state-cache-mb %d has no effect",
                    size_mb)
        yield
        return
    before = worker_handlers.STATE_CACHE_SIZE_MB
    worker_handlers.STATE_CACHE_SIZE_MB = size_mb
    try:
        yield
    finally:
        worker_handlers.STATE_CACHE_SIZE_MB = before


def run_pipeline(pipeline: beam.Pipeline) -> Any:
    """Run ``pipeline`` to completion; returns the result. Closes the DaskRunner's client afterwards."""
    result = pipeline.run()
    try:
        result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)
        if client is not None:
            client.close()
    return result


def counter_values(result: Any, names: Sequence[str]) -> dict[str, int] | None:
    """Committed values of the job's Beam counters, or None when the runner does not report metrics."""
    try:
        metrics = result.metrics()
        query = metrics.query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except (NotImplementedError, AttributeError):
        return None
    out = {name: 0 for name in names}
    for counter in query["counters"]:
        if counter.key.metric.name in out:
            value = counter.committed if counter.committed is not None else counter.attempted
            out[counter.key.metric.name] += int(value or 0)
    return out

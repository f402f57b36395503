"""``rnnstream featurize``: a Beam batch job from audio files or sensor tables to a featurized dataset.

::

    rnnstream featurize --input ../shared/data/fsdd/recordings --output out/fsdd \\
        --sample-rate 8000 --n-mels 40 \\
        --label-pattern '(?P<label>\\d)_(?P<speaker>[a-z]+)_(?P<take>\\d+)\\.wav'

    rnnstream featurize --input 'sensors/*.csv' --output out/sensors \\
        --sensor-columns ax,ay,az --timestamp-column t --rate-hz 50 --max-gap-s 0.5 --gap-policy split

writes the dataset of :mod:`rnnstream.pipeline.dataset` into ``--output``: ``examples-SSSSS-of-NNNNN.parquet`` shards
(PARQUET_SCHEMA; one row per audio file, one per gap-free segment of a sensor table with id
``path#segK``), ``feature_config.json``, ``stats.json`` (full-pass per-dimension count/mean/variance,
merged exactly by :class:`~rnnstream.beam_jobs.common.StatsCombineFn`), ``dead_letter.jsonl`` (one
``{"path", "reason", "kind"}`` per input that failed) and ``summary.json`` (``inputs``, ``outputs``,
``dead_letters``, ...; printed at the end). ``inputs == outputs + dead_letters`` always: the job fails
loudly if that ever does not hold.

Every input is checked before it is opened (a file name that is not valid UTF-8, a FIFO or other special
file, a dangling link or link loop: dead letters ``FileNameError``, ``SpecialFileError``,
``BrokenLinkError``), and audio is decoded within ``--max-seconds`` (default 3600), ``--max-decoded-mb``
(512) and ``--min-sample-rate`` (1000 Hz), checked from the header before decoding
(:class:`~rnnstream.pipeline.audio_io.AudioLimits`; dead letters ``AudioTooLongError``,
``AudioTooLargeError``, ``SampleRateTooLowError``).

Graph::

    Create(shard tasks, reshuffle) (plan_shards on the submitting machine: records dealt round-robin into
                                    --num-shards tasks; only the tasks, paths and labels, cross processes)
      -> FeaturizeShard (ParDo per shard task: read bytes (open, or FileSystems for remote paths),
                         decode_audio / read_sensor_table, AudioFeaturizer / SensorFeaturizer, write the
                         Parquet shard, one row group; dead letters on a tagged output)
           shard reports (records given, inputs that gave examples, examples, frames, partial stats)
           dead letters
    both -> Gather -> Finalize (the shards' partial stats merged by StatsCombineFn; dead_letter.jsonl,
                                stats.json, feature_config.json, summary.json)

:class:`FeaturizeFiles` is the per-file transform (examples + dead letters), for pipelines that want the
examples themselves (``rnnstream infer`` on raw files uses it).

Every Beam option passes through (``--runner``, ``--direct_num_workers=2
--direct_running_mode=multi_processing``, ``--runner=DaskRunner --dask_client_address=tcp://...``); see
:mod:`rnnstream.beam_jobs.common` for Flink, Spark, Dataflow and multi-machine Dask commands.

Python API: :func:`featurize_corpus`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from rnnstream.beam_jobs.common import (
    BATCH_DEFAULT_RUNNER,
    INPUT_ERRORS,
    METRICS_NAMESPACE,
    DeadLetter,
    FeatureOptions,
    Gather,
    InputOptions,
    InputRecord,
    KeepType,
    ShardReport,
    StatsCombineFn,
    counter_values,
    feature_config_from_options,
    has_scheme,
    job_pipeline,
    prepare_output_dir,
    read_text,
    reject_unknown_args,
    resolve_runner_aliases,
    run_pipeline,
    shard_of,
    write_jsonl,
    write_shard,
    write_summary,
    write_text,
)
from rnnstream.beam_jobs.inputs import (
    apply_label_pattern,
    check_input_path,
    compile_label_pattern,
    list_inputs,
)
from rnnstream.beam_jobs.options import add_featurize_arguments, audio_limits_from_options
from rnnstream.beam_jobs.shards import ShardTask, plan_shards, resolve_num_shards, spread_tasks
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.dataset import (
    DEAD_LETTER_FILE,
    FEATURE_CONFIG_FILE,
    SHARD_PREFIX,
    STATS_FILE,
    SUMMARY_FILE,
    Example,
)
from rnnstream.pipeline.errors import (
    ConfigError,
    EmptyAudioError,
    RnnstreamError,
    SensorError,
)
from rnnstream.pipeline.stats import RunningStats

if TYPE_CHECKING:
    from rnnstream.pipeline.audio_io import AudioLimits

LOG = logging.getLogger(__name__)

EXAMPLES = "examples"
SHARDS = "shards"
DEAD_LETTERS = "dead_letters"
COUNTERS = ("inputs", "outputs", "dead_letters", "examples", "frames")


class FeaturizeOptions(PipelineOptions):
    """Options of ``rnnstream featurize`` besides :class:`InputOptions` and :class:`FeatureOptions`."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        add_featurize_arguments(parser)


# --------------------------------------------------------------------------------------------
# DoFns
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputCount:
    """The number of inputs the job read (counted in the pipeline, apart from outputs and dead letters)."""

    n: int


def _local_copy(path: str, data: bytes) -> str:
    """Write ``data`` to a temporary file with ``path``'s extension (for readers that need a local path)."""
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return tmp


class FileFeaturizer:
    """One input record -> its examples (one per audio file, one per sensor segment), or a typed error.

    Plain Python (not a DoFn), shared by the per-file and per-shard DoFns. Decoding and featurizing are
    :mod:`rnnstream.pipeline.audio_io` / :mod:`rnnstream.pipeline.features` / :mod:`rnnstream.pipeline.sensors`, the code offline and
    streaming use.
    """

    def __init__(self, config: FeatureConfig, label_pattern: str | None = None, limits: AudioLimits | None = None):
        self.config = config
        self.regex = compile_label_pattern(label_pattern) if label_pattern else None
        if limits is None:
            from rnnstream.pipeline.audio_io import DEFAULT_LIMITS

            limits = DEFAULT_LIMITS
        self.limits = limits
        if config.kind == "audio":
            from rnnstream.pipeline.features import AudioFeaturizer

            self.audio = AudioFeaturizer(config)
        else:
            from rnnstream.pipeline.sensors import SensorFeaturizer

            self.sensor = SensorFeaturizer(config)

    def __call__(self, record: InputRecord) -> list[Example]:
        """Raises the errors of :data:`~rnnstream.beam_jobs.common.INPUT_ERRORS` for an input that cannot be used.

        The path is checked before it is opened (:func:`~rnnstream.beam_jobs.inputs.check_input_path`: a name
        not valid UTF-8, a FIFO or other special file, a broken link).
        """
        size = check_input_path(record.path)
        record = apply_label_pattern(record, self.regex)
        if self.config.kind == "audio":
            return self._audio_examples(record, size)
        return self._sensor_examples(record)

    @staticmethod
    def _read(path: str, max_bytes: int | None = None, size: int | None = None) -> bytes:
        """The file's bytes, reading at most ``max_bytes + 1`` of them when bounded.

        ``size``: a local file's size (from :func:`check_input_path`): the file is read with ``open``, asking
        for ``size + 1`` bytes (a buffer of the file's size, not of ``max_bytes``); remote paths go through
        Beam's ``FileSystems``.
        """
        if size is not None and not has_scheme(path):
            want = size + 1 if max_bytes is None else min(size, max_bytes) + 1
            with open(path, "rb") as fh:
                data = fh.read(want)
                if len(data) > size:  # the file grew since it was stat-ed: read on, within the bound
                    data += fh.read() if max_bytes is None else fh.read(max(0, max_bytes + 1 - len(data)))
                return data
        with FileSystems.open(path) as fh:
            return fh.read() if max_bytes is None else fh.read(max_bytes + 1)

    def _audio_examples(self, record: InputRecord, size: int | None = None) -> list[Example]:
        from rnnstream.pipeline.audio_io import check_extension, decode_audio

        check_extension(record.path)  # before reading the bytes
        if size is not None:
            self.limits.check_size(record.path, size)  # a local file: refused before it is read
        data = self._read(record.path, self.limits.max_bytes, size)
        self.limits.check_size(record.path, len(data), capped=True)  # a remote file (no size known before)
        samples = decode_audio(data, self.config, name=record.path, limits=self.limits)
        feats = self.audio.featurize(samples)
        if feats.shape[0] == 0:
            audio = self.audio.cfg
            raise EmptyAudioError(
                f"{record.path}: {samples.shape[0]} samples give no feature frame; a frame needs "
                f"{audio.step_length} samples (hop x stack) at {audio.sample_rate} Hz"
            )
        return [Example(id=record.path, path=record.path, features=feats, label=record.label, metadata=record.metadata)]

    def _sensor_examples(self, record: InputRecord) -> list[Example]:
        from rnnstream.pipeline.sensors import read_sensor_table

        if "://" in record.path:  # pandas reads local paths; copy remote tables first
            tmp = _local_copy(record.path, self._read(record.path))
            try:
                ts, values = read_sensor_table(tmp, self.config)
            except RnnstreamError as err:
                raise type(err)(str(err).replace(tmp, record.path)) from None
            finally:
                os.unlink(tmp)
        else:
            ts, values = read_sensor_table(record.path, self.config)
        segments = self.sensor.segments(ts, values)
        if not segments:
            raise SensorError(
                f"{record.path}: {ts.shape[0]} reading(s) from t={ts[0]:.6g} s to t={ts[-1]:.6g} s give no frame on "
                f"the {self.sensor.cfg.rate_hz:g} Hz grid; expected readings spanning at least one grid point"
            )
        return [
            Example(
                id=f"{record.path}#seg{k}",
                path=record.path,
                features=seg.values,
                label=record.label,
                metadata={**record.metadata, "segment": k, "start_time": float(seg.times[0])},
            )
            for k, seg in enumerate(segments)
        ]


class _Counters:
    def __init__(self) -> None:
        self.inputs = Metrics.counter(METRICS_NAMESPACE, "inputs")
        self.outputs = Metrics.counter(METRICS_NAMESPACE, "outputs")
        self.dead_letters = Metrics.counter(METRICS_NAMESPACE, "dead_letters")
        self.examples = Metrics.counter(METRICS_NAMESPACE, "examples")
        self.frames = Metrics.counter(METRICS_NAMESPACE, "frames")

    def ok(self, examples: list[Example]) -> None:
        self.inputs.inc()
        self.outputs.inc()
        self.examples.inc(len(examples))
        self.frames.inc(sum(int(e.features.shape[0]) for e in examples))

    def dead(self) -> None:
        self.inputs.inc()
        self.dead_letters.inc()


class _FeaturizeFn(beam.DoFn):
    """One input record -> its examples, or one dead letter (tagged output ``DEAD_LETTERS``)."""

    def __init__(self, config: FeatureConfig, label_pattern: str | None = None, limits: AudioLimits | None = None):
        self.config = config
        self.label_pattern = label_pattern
        self.limits = limits
        self.counters = _Counters()

    def setup(self) -> None:
        self._featurize = FileFeaturizer(self.config, self.label_pattern, self.limits)

    def process(self, record: InputRecord) -> Iterator[Any]:
        try:
            examples = self._featurize(record)
        except INPUT_ERRORS as err:
            self.counters.dead()
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, DeadLetter.of(record.path, err))
            return
        self.counters.ok(examples)
        yield from examples


class _FeaturizeShardFn(beam.DoFn):
    """A :class:`ShardTask` -> featurize each record, write the shard -> one :class:`ShardReport`
    (main output; no file when every record failed) and a dead letter per failed record (tagged output)."""

    def __init__(self, config: FeatureConfig, label_pattern: str | None, prefix: str, num_shards: int,
                 limits: AudioLimits | None = None):
        self.config = config
        self.label_pattern = label_pattern
        self.prefix = prefix
        self.num_shards = num_shards
        self.limits = limits
        self.counters = _Counters()
        self.shards = Metrics.counter(METRICS_NAMESPACE, "shards")

    def setup(self) -> None:
        self._featurize = FileFeaturizer(self.config, self.label_pattern, self.limits)

    def process(self, task: ShardTask) -> Iterator[Any]:
        examples: list[Example] = []
        for record in sorted(task.records, key=lambda r: r.path):
            try:
                found = self._featurize(record)
            except INPUT_ERRORS as err:
                self.counters.dead()
                yield beam.pvalue.TaggedOutput(DEAD_LETTERS, DeadLetter.of(record.path, err))
                continue
            self.counters.ok(found)
            examples += found
        if examples:
            self.shards.inc()
        yield write_shard(self.prefix, task.index, self.num_shards, examples, self.config.dim,
                          records=len(task))


class _FinalizeFn(beam.DoFn):
    """Writes dead_letter.jsonl, stats.json, feature_config.json and (last) summary.json; emits the summary."""

    def __init__(self, output_dir: str, config: FeatureConfig):
        self.output_dir = output_dir
        self.config = config

    def process(self, element: tuple[None, Sequence[Any]]) -> Iterator[dict[str, Any]]:
        _, items = element
        items = list(items)
        reports = [x for x in items if isinstance(x, ShardReport)]
        shards = sorted((r for r in reports if r.path is not None), key=lambda r: r.path or "")
        dead = sorted((x for x in items if isinstance(x, DeadLetter)), key=lambda d: (d.path, d.kind))
        inputs = sum(r.records for r in reports)  # records each shard was given, apart from their outcomes
        # the shards' partial statistics, merged exactly (Chan et al.): one small accumulator per shard
        partial = [r.stats for r in reports]
        stats = StatsCombineFn(self.config.dim).merge_accumulators(partial or [RunningStats.empty(self.config.dim)])
        join = FileSystems.join
        write_jsonl(join(self.output_dir, DEAD_LETTER_FILE), (d.to_dict() for d in dead))
        write_text(join(self.output_dir, STATS_FILE), stats.to_json() + "\n")
        write_text(join(self.output_dir, FEATURE_CONFIG_FILE), self.config.to_json(indent=2) + "\n")
        summary = {
            "inputs": inputs,
            "outputs": sum(r.inputs for r in shards),
            "dead_letters": len(dead),
            "examples": sum(r.examples for r in shards),
            "frames": sum(r.frames for r in shards),
            "shards": [(r.path or "").rsplit("/", 1)[-1] for r in shards],
            "dead_letter_kinds": dict(sorted(Counter(d.kind for d in dead).items())),
            "feature_kind": self.config.kind,
            "dim": self.config.dim,
        }
        yield write_summary(self.output_dir, summary, "featurize")


# --------------------------------------------------------------------------------------------
# Public transforms
# --------------------------------------------------------------------------------------------


class FeaturizeFiles(beam.PTransform):
    """:class:`InputRecord` s -> ``{"examples": Example, "dead_letters": DeadLetter}``.

    Each record yields its examples (one per audio file, one per sensor segment) or exactly one dead
    letter. Decoding and featurizing are :mod:`rnnstream.pipeline.audio_io` / :mod:`rnnstream.pipeline.features` /
    :mod:`rnnstream.pipeline.sensors`, the same code as offline and streaming.
    """

    def __init__(self, config: FeatureConfig, label_pattern: str | None = None, label: str | None = None, *,
                 limits: AudioLimits | None = None):
        super().__init__(label)
        self.config = config
        self.label_pattern = label_pattern
        self.limits = limits

    def expand(self, records: beam.PCollection) -> dict[str, beam.PCollection]:
        fn = _FeaturizeFn(self.config, self.label_pattern, self.limits)
        outs = records | "Featurize" >> beam.ParDo(fn).with_outputs(
            DEAD_LETTERS, main=EXAMPLES
        )
        return {
            EXAMPLES: outs[EXAMPLES] | "OnlyExamples" >> KeepType(Example),
            DEAD_LETTERS: outs[DEAD_LETTERS] | "OnlyDeadLetters" >> KeepType(DeadLetter),
        }


class FeaturizeShards(beam.PTransform):
    """:class:`ShardTask` s (from :func:`plan_shards`) -> a dataset in ``output_dir``; returns a PCollection of
    one summary dict.

    Each task is featurized and written by one ``DoFn`` call (``FeaturizeShard``), so feature matrices
    never cross a process boundary; shard reports carry partial :class:`RunningStats` (one per shard,
    ``dim`` x 2 floats), merged exactly by :meth:`StatsCombineFn.merge_accumulators` in the finalize step
    (a separate ``CombineGlobally`` branch would add a dozen transforms of fixed cost for a few dozen
    accumulators). Shards are the unit of parallelism: give a few per worker.
    """

    def __init__(self, output_dir: str, config: FeatureConfig, *, label_pattern: str | None = None,
                 num_shards: int = 1, label: str | None = None, limits: AudioLimits | None = None):
        super().__init__(label)
        if num_shards < 1:
            raise ConfigError(f"num_shards must be >= 1, got {num_shards}")
        self.output_dir = output_dir
        self.config = config
        self.label_pattern = label_pattern
        self.num_shards = num_shards
        self.limits = limits

    def expand(self, tasks: beam.PCollection) -> beam.PCollection:
        prefix = FileSystems.join(self.output_dir, SHARD_PREFIX)
        fn = _FeaturizeShardFn(self.config, self.label_pattern, prefix, self.num_shards, self.limits)
        outs = tasks | "FeaturizeShard" >> beam.ParDo(fn).with_outputs(DEAD_LETTERS, main=SHARDS)
        shards = outs[SHARDS] | "OnlyShards" >> KeepType(ShardReport)
        dead = outs[DEAD_LETTERS] | "OnlyDeadLetters" >> KeepType(DeadLetter)
        return (
            (shards, dead)
            | "Gather" >> Gather()
            | "Finalize" >> beam.ParDo(_FinalizeFn(self.output_dir, self.config))
        )


class FeaturizeCorpus(beam.PTransform):
    """:class:`InputRecord` s -> a dataset in ``output_dir``; returns a PCollection of one summary dict.

    For records that are already a PCollection: they are grouped by shard (``crc32(path) % num_shards``,
    the only shuffle moves paths) into :class:`ShardTask` s for :class:`FeaturizeShards`. The job itself
    plans its tasks before the pipeline (:func:`plan_shards`) and skips this shuffle.
    """

    def __init__(self, output_dir: str, config: FeatureConfig, *, label_pattern: str | None = None,
                 num_shards: int = 1, label: str | None = None, limits: AudioLimits | None = None):
        super().__init__(label)
        self.shards = FeaturizeShards(output_dir, config, label_pattern=label_pattern, num_shards=num_shards,
                                      limits=limits)

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        n = self.shards.num_shards
        return (
            records
            | "KeyByShard" >> beam.Map(lambda r: (shard_of(r.path, n), r))
            | "GroupByShard" >> beam.GroupByKey()
            | "ToTasks" >> beam.MapTuple(lambda index, group: ShardTask(index, tuple(group)))
            | "FeaturizeShards" >> self.shards
        )


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------

_STALE = (f"{SHARD_PREFIX}-*.parquet", STATS_FILE, SUMMARY_FILE, DEAD_LETTER_FILE, FEATURE_CONFIG_FILE)


def _build_and_run(records: list[InputRecord], output_dir: str, config: FeatureConfig, label_pattern: str | None,
                   shards: int, options: PipelineOptions | None,
                   test_pipeline: beam.Pipeline | None, limits: AudioLimits | None = None) -> Any:
    if label_pattern is not None:
        compile_label_pattern(label_pattern)
    prepare_output_dir(output_dir, _STALE)
    with job_pipeline(options, test_pipeline) as pipeline:
        _ = (
            pipeline
            | "PlanShards" >> beam.Create(plan_shards(records, shards), reshuffle=spread_tasks(options))
            | "FeaturizeShards" >> FeaturizeShards(output_dir, config, label_pattern=label_pattern, num_shards=shards,
                                                   limits=limits)
        )
        return run_pipeline(pipeline)


def read_summary(output_dir: str) -> dict[str, Any]:
    return json.loads(read_text(FileSystems.join(output_dir, SUMMARY_FILE)))


def featurize_corpus(
    inputs: Sequence[str] | None,
    output_dir: str,
    feature_config: FeatureConfig,
    label_pattern: str | None = None,
    manifest: str | None = None,
    pipeline_args: Sequence[str] | None = None,
    num_shards: int | None = None,
    limits: AudioLimits | None = None,
    inputs_per_shard: int | None = None,
) -> dict[str, Any]:
    """Featurize files into a dataset in ``output_dir`` with Beam; returns the summary dict.

    ``inputs``: files, directories, globs (see :func:`rnnstream.beam_jobs.inputs.list_inputs`); ``pipeline_args``:
    Beam options such as ``["--direct_num_workers=2", "--direct_running_mode=multi_processing"]``;
    ``limits``: the decoding bounds of audio files (default ``AudioLimits()``); ``num_shards`` /
    ``inputs_per_shard``: the Parquet shards, the unit of parallel work (default: :func:`default_num_shards`
    for the workers the options ask for).
    The returned dict is ``summary.json`` plus ``"metrics"`` (the Beam counters, or None when the runner
    does not report them).

    Raises:
        DatasetError: no inputs / a pattern matching nothing / bad manifest. ConfigError: bad options.
    """
    records = list_inputs(inputs, manifest, label_pattern)
    options = PipelineOptions(resolve_runner_aliases(list(pipeline_args or []), BATCH_DEFAULT_RUNNER))
    shards = resolve_num_shards(len(records), num_shards, inputs_per_shard, options)
    result = _build_and_run(records, output_dir, feature_config, label_pattern, shards, options, None, limits)
    summary = read_summary(output_dir)
    summary["metrics"] = counter_values(result, COUNTERS)
    return summary


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> Any:
    """Parse ``argv`` (job flags and Beam options together), run the job, return the PipelineResult."""
    argv = resolve_runner_aliases(list(argv if argv is not None else sys.argv[1:]), BATCH_DEFAULT_RUNNER)
    reject_unknown_args(argv)
    options = PipelineOptions(argv)
    io_opts = options.view_as(InputOptions)
    if not io_opts.output:
        raise ConfigError("--output DIR is required")
    config = feature_config_from_options(options.view_as(FeatureOptions))
    job_opts = options.view_as(FeaturizeOptions)
    limits = audio_limits_from_options(job_opts)
    records = list_inputs(io_opts.inputs, io_opts.manifest, io_opts.label_pattern)
    LOG.info("featurize: %d input(s) -> %s", len(records), io_opts.output)
    shards = resolve_num_shards(len(records), job_opts.num_shards, job_opts.inputs_per_shard, options)
    return _build_and_run(
        records, io_opts.output, config, io_opts.label_pattern, shards, options, test_pipeline, limits,
    )


def main(argv: list[str] | None = None) -> int:
    """``rnnstream featurize`` (parsing, logging and exit status: :data:`rnnstream.beam_jobs.cli.FEATURIZE`)."""
    from rnnstream.beam_jobs.cli import FEATURIZE

    return FEATURIZE.main(argv)


if __name__ == "__main__":
    sys.exit(main())

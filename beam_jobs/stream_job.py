"""``rnnstream stream-job``: the Beam streaming job (per-stream state, ordering, gaps, eviction).

Reads chunk messages (format: :mod:`rnnstream.beam_jobs.messages`, ``docs/stream_job.md``), runs them through
:class:`rnnstream.beam_jobs.stateful.StreamInference` and writes JSON lines under ``--output DIR``:

* ``predictions-*.jsonl``: one per applied chunk: ``stream``, ``seq``, ``event_time``, ``t`` (seconds of
  stream consumed), ``frames``, ``predicted`` (the model's answer; null before the first frame), ``scores``
  (classify/tag: probability by label name) or ``values`` (and ``"filled": true`` for a gap filled with zeros);
* ``events-*.jsonl``: ``gap``, ``end`` and ``eviction`` records (an eviction carries the snapshot and the
  stream's ``sample_rate``, both needed to resume it);
* ``dead_letters-*.jsonl``: ``kind``, ``reason``, ``stream``, ``seq``, ``message`` (the message again);
* ``summary.json`` (when the run ends): the Beam counters and the balance
  ``messages_in == chunks + duplicates + dead_letters + resumes``.

Files are named by their data and written once, atomically (:class:`WriteRecords`), so a runner retrying a
bundle does not duplicate records; :func:`read_records` merges them.

Sources (exactly one):

* ``--input FILE.jsonl`` (repeatable; globs): a bounded replay, run in batch; element timestamps are the
  messages' ``event_time`` and the gap/idle timers are event-time timers, so the end of the input
  (final watermark) resolves every pending gap deterministically and evicts every stream that did not end.
* ``--input-dir DIR``: watch ``DIR/*.jsonl`` while the job runs (:class:`WatchDirectory`, streaming; each
  new file is read once; ``--watch-seconds`` stops watching); element timestamps are listing times.
* ``--pubsub-subscription``/``--pubsub-topic`` (``ReadFromPubSub``; ``--pubsub-timestamp-attribute`` for
  event time) and ``--kafka-bootstrap-servers`` + ``--kafka-topic`` (``apache_beam.io.kafka.ReadFromKafka``,
  a cross-language transform that needs Java) for real runners; not exercised by the tests here.

Timers are event-time timers unless ``--time-domain processing`` (see ``docs/stream_job.md`` for the
DirectRunner's limits with processing time).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
import uuid
import zlib
from collections.abc import Iterable, Sequence
from typing import Any, cast

import apache_beam as beam
from apache_beam.coders import BytesCoder, PickleCoder
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from rnnstream.beam_jobs.common import (
    InputOptions,
    check_state_cache_mb,
    counter_values,
    in_memory_state_cache,
    job_pipeline,
    prepare_output_dir,
    read_text,
    reject_unknown_args,
    resolve_runner_aliases,
    run_pipeline,
    write_text,
)
from rnnstream.beam_jobs.inputs import expand_paths
from rnnstream.beam_jobs.options import BATCH_DEFAULT_RUNNER, add_stream_job_arguments, names_runner
from rnnstream.beam_jobs.stateful import (
    DEAD_LETTERS,
    EVENTS,
    StreamInference,
    StreamJobConfig,
    TimeDomainName,
)
from rnnstream.pipeline.errors import ConfigError, RnnstreamError

LOG = logging.getLogger(__name__)

KINDS = ("predictions", EVENTS, DEAD_LETTERS)
SUMMARY_FILE = "summary.json"
COUNTERS = ("messages_in", "chunks", "filled_chunks", "duplicates", "dead_letters", "resumes", "gaps",
            "missing_chunks", "evictions", "ends", "model_step_us", "stateful_fn_us")
_PARTIAL = ".partial"
_STALE = tuple(f"{k}-*.jsonl" for k in KINDS) + tuple(f"{k}-*{_PARTIAL}" for k in KINDS) + (SUMMARY_FILE,)


class StreamJobOptions(PipelineOptions):
    """Options of ``rnnstream stream-job`` (``--input``/``--output`` come from :class:`InputOptions`)."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        add_stream_job_arguments(parser)  # --no-resample included


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------


def _shard_of(record: dict[str, Any], kind: str, shards: int) -> tuple[tuple[str, int], str]:
    """``((kind, shard), line)``: the shard is a stable hash of the stream id, so a stream's records stay together."""
    stream = record.get("stream")
    shard = zlib.crc32(str(stream).encode("utf-8", "replace")) % shards
    return (kind, shard), json.dumps(record, sort_keys=True, allow_nan=False)


class _WriteShardFn(beam.DoFn):
    """One grouped pane of one shard -> ``{kind}-{shard:05d}-{pane:06d}.jsonl``, written once, atomically.

    The name depends only on the key and the pane index, both fixed by the ``GroupByKey`` before it: a retried
    bundle gets the same name for the same records. The file is written under a temporary name and renamed;
    an attempt that finds the final file already there (an earlier attempt completed) writes nothing.
    """

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def process(self, element: tuple[tuple[str, int], Iterable[str]],
                pane: Any = beam.DoFn.PaneInfoParam) -> Iterable[str]:
        (kind, shard), lines = element
        index = pane.index if pane is not None else 0
        final = FileSystems.join(self.output_dir, f"{kind}-{shard:05d}-{index:06d}.jsonl")
        if _write_once(final, "".join(line + "\n" for line in lines)):
            yield final


class _WriteBundleFn(beam.DoFn):
    """Unbounded inputs: each bundle's records to ``{kind}-b{sha256 of its lines}.jsonl``, written atomically.

    A retried bundle holds the same records (the stateful DoFn's outputs are deterministic given its committed
    input and state, and a failed attempt's state writes are discarded), so it gets the same name: the retry
    finds the file there and writes nothing, or replaces a file of identical content.
    """

    def __init__(self, output_dir: str, kind: str):
        self.output_dir, self.kind = output_dir, kind
        self._lines: list[str] = []

    def start_bundle(self) -> None:
        self._lines = []

    def process(self, record: dict[str, Any]) -> None:
        self._lines.append(json.dumps(record, sort_keys=True, allow_nan=False))

    def finish_bundle(self) -> None:
        if self._lines:
            text = "".join(line + "\n" for line in sorted(self._lines))
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
            _write_once(FileSystems.join(self.output_dir, f"{self.kind}-b{digest}.jsonl"), text)
            self._lines = []


def _write_once(final: str, text: str) -> bool:
    """Write ``final`` atomically (a temporary name, then a rename) unless it exists; whether it wrote."""
    if FileSystems.exists(final):
        return False
    temp = f"{final}.{uuid.uuid4().hex}{_PARTIAL}"
    write_text(temp, text)
    FileSystems.rename([temp], [final])
    return True


class WriteRecords(beam.PTransform[dict[str, beam.PCollection[dict[str, Any]]], beam.pvalue.PDone]):
    """Write the three outputs of :class:`StreamInference` as JSON lines under ``output_dir``, retry-safe.

    * Bounded input (batch): records are keyed by ``(kind, hash(stream) % shards)`` and grouped (the runner
      commits a ``GroupByKey``'s output once, so a retried writer sees the same records), then each group is
      written to ``{kind}-{shard:05d}-{pane:06d}.jsonl`` (:class:`_WriteShardFn`): a name fixed by the data.
    * Unbounded input (streaming): each bundle is written to a file named by the hash of its content
      (:class:`_WriteBundleFn`), so records appear as the job runs and a retried bundle rewrites the same file.

    Files are written under a temporary ``*.partial`` name and renamed; readers match ``{kind}-*.jsonl`` only.
    """

    def __init__(self, output_dir: str, shards: int = 4, label: str | None = None):
        super().__init__(label)
        self.output_dir = output_dir
        self.shards = shards

    def expand(self, outputs: dict[str, beam.PCollection]) -> beam.pvalue.PDone:
        first = next(iter(outputs.values()))
        for kind in KINDS:
            name = kind.title().replace("_", "")
            if not first.is_bounded:
                _ = outputs[kind] | f"Write{name}" >> beam.ParDo(_WriteBundleFn(self.output_dir, kind))
                continue
            _ = (outputs[kind]
                 | f"Key{name}" >> beam.Map(_shard_of, kind, self.shards)
                 | f"Group{name}" >> beam.GroupByKey()
                 | f"Write{name}" >> beam.ParDo(_WriteShardFn(self.output_dir)))
        return beam.pvalue.PDone(first.pipeline)


def read_records(output_dir: str, kind: str) -> list[dict[str, Any]]:
    """All records of one kind (``predictions``, ``events``, ``dead_letters``) written under ``output_dir``."""
    match = FileSystems.match([FileSystems.join(output_dir, f"{kind}-*.jsonl")])[0]
    out: list[dict[str, Any]] = []
    for meta in sorted(match.metadata_list, key=lambda m: m.path):
        out += [json.loads(line) for line in read_text(meta.path).splitlines() if line.strip()]
    return out


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------


class _ListNewFilesFn(beam.DoFn):
    """On each tick, the files matching the pattern that this key has not emitted yet (state: seen paths)."""

    SEEN = ReadModifyWriteStateSpec("seen", PickleCoder())

    def __init__(self, pattern: str):
        self.pattern = pattern

    def process(self, element: Any, seen: Any = beam.DoFn.StateParam(SEEN)) -> Iterable[str]:
        done: set[str] = seen.read() or set()
        paths = sorted(m.path for m in FileSystems.match([self.pattern])[0].metadata_list)
        new = [path for path in paths if path not in done]
        if new:
            seen.write(done | set(new))
        yield from new


def _read_lines(path: str) -> Iterable[bytes]:
    """A file's non-blank lines as bytes (a line that is not UTF-8 becomes a dead letter, not a crash)."""
    with FileSystems.open(path) as fh:
        return [line for line in fh.read().splitlines() if line.strip()]


class _PollDirectoryFn(beam.DoFn):
    """One element in; lists the pattern every ``interval`` s until ``stop`` and yields new files' lines."""

    def __init__(self, pattern: str, interval: float, stop: float):
        self.pattern, self.interval, self.stop = pattern, interval, stop

    def process(self, _: Any) -> Iterable[Any]:
        from apache_beam.transforms.window import TimestampedValue

        seen: set[str] = set()
        while True:
            listed_at = time.time()
            for path in sorted(m.path for m in FileSystems.match([self.pattern])[0].metadata_list):
                if path not in seen:
                    seen.add(path)
                    yield from (TimestampedValue(line, listed_at) for line in _read_lines(path))
            if listed_at >= self.stop:
                return
            time.sleep(max(0.0, min(self.interval, self.stop - time.time())))


class WatchDirectory(beam.PTransform[beam.pvalue.PBegin, beam.PCollection[str]]):
    """Lines of the ``*.jsonl`` files appearing in ``directory`` while the pipeline runs.

    Lists the directory every ``interval`` seconds until ``stop`` (epoch seconds; None: forever); each file
    is read once, when first seen (write files elsewhere, then move them in); element timestamps are the
    listing times. Two forms:

    * ``periodic=True`` (streaming runners): ``PeriodicImpulse`` ticks, a stateful DoFn remembering the
      files seen; lines flow as files appear. ``fileio.MatchContinuously`` would do the same, but its
      ``Watch`` transform does not run on the Python DirectRunner of Beam 2.77.
    * ``periodic=False`` (the DirectRunner): one polling DoFn that returns at ``stop`` (required). On the
      DirectRunner the periodic form runs on the FnApiRunner stage by stage, which fires the stream job's
      event-time timers between polling rounds (beam#35168: gaps and evictions too early); the polling
      form makes the watch one bounded input, so timers fire only after it, as in a replay.
    """

    def __init__(self, directory: str, interval: float = 2.0, stop: float | None = None, *, periodic: bool = True,
                 label: str | None = None):
        super().__init__(label)
        if not periodic and stop is None:
            raise ConfigError("watching a directory on the DirectRunner needs an end: give --watch-seconds")
        self.pattern = FileSystems.join(directory, "*.jsonl")
        self.interval = float(interval)
        self.stop = stop
        self.periodic = periodic

    def expand(self, p: beam.pvalue.PBegin) -> beam.PCollection[str]:
        if not self.periodic:
            return (
                p
                | "Start" >> beam.Impulse()
                | "Poll" >> beam.ParDo(_PollDirectoryFn(self.pattern, self.interval, float(self.stop)))  # type: ignore[arg-type]
            )
        from apache_beam.transforms.periodicsequence import PeriodicImpulse
        from apache_beam.utils.timestamp import MAX_TIMESTAMP

        stop = MAX_TIMESTAMP if self.stop is None else self.stop
        return (
            p
            | "Tick" >> PeriodicImpulse(start_timestamp=time.time(), stop_timestamp=stop, fire_interval=self.interval)
            | "OneKey" >> beam.Map(lambda _: ("dir", None))
            | "NewFiles" >> beam.ParDo(_ListNewFilesFn(self.pattern))
            | "ReadLines" >> beam.FlatMap(_read_lines)
        )


_DIRECT_RUNNERS = (None, "DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner", "FnApiRunner")


def _on_direct_runner(p: beam.Pipeline) -> bool:
    runner = p.options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) or runner is None else type(runner).__name__
    return name in _DIRECT_RUNNERS or type(p.runner).__name__ in ("DirectRunner", "SwitchingDirectRunner")


def _read_messages(p: beam.Pipeline, io_opts: InputOptions, opts: StreamJobOptions) -> tuple[beam.PCollection, bool]:
    """The message lines and whether the source is bounded."""
    sources = [bool(io_opts.inputs), bool(opts.input_dir), bool(opts.pubsub_subscription or opts.pubsub_topic),
               bool(opts.kafka_bootstrap_servers)]
    if sum(sources) != 1:
        raise ConfigError("give exactly one source: --input FILE.jsonl, --input-dir DIR, --pubsub-subscription/"
                          "--pubsub-topic, or --kafka-bootstrap-servers with --kafka-topic")
    if io_opts.inputs:
        files = expand_paths(io_opts.inputs)
        return (
            p
            | "ListFiles" >> beam.Create(files)
            | "ReadFiles" >> beam.io.ReadAllFromText(coder=BytesCoder())  # bytes: a non-UTF-8 line is a dead letter
            | "SkipBlankLines" >> beam.Filter(lambda line: bool(line.strip()))
        ), True
    if opts.input_dir:
        stop = time.time() + float(opts.watch_seconds) if opts.watch_seconds is not None else None
        periodic = not _on_direct_runner(p)
        return p | "WatchDir" >> WatchDirectory(opts.input_dir, float(opts.poll_interval), stop, periodic=periodic), False
    if opts.pubsub_subscription or opts.pubsub_topic:
        return p | "ReadPubSub" >> beam.io.ReadFromPubSub(
            topic=opts.pubsub_topic if not opts.pubsub_subscription else None,
            subscription=opts.pubsub_subscription,
            timestamp_attribute=opts.pubsub_timestamp_attribute,
        ), False
    if not opts.kafka_topic:
        raise ConfigError("--kafka-bootstrap-servers needs --kafka-topic (repeatable)")
    from apache_beam.io.kafka import ReadFromKafka

    return (
        p
        | "ReadKafka" >> ReadFromKafka(
            consumer_config={"bootstrap.servers": opts.kafka_bootstrap_servers},
            topics=list(opts.kafka_topic),
            timestamp_policy=ReadFromKafka.create_time_policy,
        )
        | "KafkaValues" >> beam.Map(lambda kv: kv[1])
    ), False


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------


def config_from_options(opts: StreamJobOptions, bounded: bool) -> StreamJobConfig:
    domain = cast(TimeDomainName, opts.time_domain or "event")  # StreamJobConfig refuses any other value
    if bounded and domain != "event":
        raise ConfigError("a bounded --input replay needs --time-domain event (the final watermark resolves gaps)")
    return StreamJobConfig(
        gap_policy=opts.on_gap, gap_timeout_s=opts.gap_timeout, idle_timeout_s=opts.idle_timeout,
        max_buffer=opts.max_buffer, chunk_size=opts.chunk_size, time_domain=domain,
        per_stream_metrics=opts.per_stream_metrics, resample=not getattr(opts, "no_resample", False),
    )


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> Any:
    """Parse ``argv`` (job flags and Beam options), run the job; returns the PipelineResult.

    When the run ends, also writes ``summary.json`` and raises :class:`RnnstreamError` if the counts do
    not balance (a message was lost).
    """
    argv = resolve_runner_aliases(list(argv if argv is not None else sys.argv[1:]))
    reject_unknown_args(argv)
    options = PipelineOptions(argv)
    io_opts = options.view_as(InputOptions)
    opts = options.view_as(StreamJobOptions)
    if not opts.model:
        raise ConfigError("--model MODEL (.onnx or checkpoint) is required")
    if not io_opts.output:
        raise ConfigError("--output DIR is required")
    bounded = bool(io_opts.inputs)
    if not bounded:
        options.view_as(StandardOptions).streaming = True
    config = config_from_options(opts, bounded)
    check_state_cache_mb(opts.local_state_cache_mb)  # before the pipeline is built
    if test_pipeline is None and not names_runner(argv) and bounded and config.time_domain == "event":
        # the FnApiRunner: what Beam's DirectRunner picks for this pipeline, without its first try at the
        # PrismRunner (see BATCH_DEFAULT_RUNNER); streaming sources and processing-time timers keep the DirectRunner
        options.view_as(StandardOptions).runner = BATCH_DEFAULT_RUNNER
    from rnnstream.beam_jobs.stateful import load_model

    info = load_model(opts.model).info  # fail fast (before the pipeline) on a bad model file
    LOG.info("stream-job: model %s (%s), %s", opts.model, info.weights_hash, config)
    prepare_output_dir(io_opts.output, _STALE)
    with job_pipeline(options, test_pipeline) as p:
        lines, bounded = _read_messages(p, io_opts, opts)
        outputs = lines | "StreamInference" >> StreamInference(opts.model, config, timestamps_from_messages=bounded)
        _ = outputs | "WriteOutputs" >> WriteRecords(io_opts.output)
        with in_memory_state_cache(opts.local_state_cache_mb):
            result = run_pipeline(p)  # a streaming source returns only when it ends (--watch-seconds) or is drained
    summary = summarize(counter_values(result, COUNTERS))
    write_text(FileSystems.join(io_opts.output, SUMMARY_FILE), json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if summary.get("balanced") is False:
        raise RnnstreamError(
            f"stream-job lost messages: {summary['messages_in']} in, but {summary['chunks']} applied + "
            f"{summary['duplicates']} duplicates + {summary['dead_letters']} dead letters + "
            f"{summary['resumes']} resumes"
        )
    return result


def summarize(counters: dict[str, int] | None) -> dict[str, Any]:
    """The summary of a finished run from its counters (``balanced`` is None without metrics)."""
    if counters is None:
        return {"metrics": None, "balanced": None}
    out: dict[str, Any] = dict(counters)
    out["balanced"] = counters["messages_in"] == (
        counters["chunks"] + counters["duplicates"] + counters["dead_letters"] + counters["resumes"]
    )
    fn_us = counters.get("stateful_fn_us") or 0
    out["model_share_of_stateful_fn"] = round(counters["model_step_us"] / fn_us, 4) if fn_us else None
    return out


def run_and_summarize(argv: Sequence[str]) -> dict[str, Any] | None:
    """Run the job (:func:`run`); returns ``summary.json`` when the run wrote one (it ended)."""
    run(argv)
    output = PipelineOptions(resolve_runner_aliases(list(argv))).view_as(InputOptions).output
    summary_path = FileSystems.join(output, SUMMARY_FILE)
    return json.loads(read_text(summary_path)) if FileSystems.exists(summary_path) else None


def main(argv: list[str] | None = None) -> int:
    """``rnnstream stream-job`` (parsing, logging and exit status: :data:`rnnstream.beam_jobs.cli.STREAM_JOB`)."""
    from rnnstream.beam_jobs.cli import STREAM_JOB

    return STREAM_JOB.main(argv)


if __name__ == "__main__":
    sys.exit(main())

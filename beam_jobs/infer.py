"""``rnnstream infer``: Beam batch inference with ``RunInference`` over a featurized dataset or raw files.

::

    rnnstream infer --model model.onnx --input out/fsdd --output out/preds             # a dataset DIR
    rnnstream infer --model model.pt --input 'wavs/*.wav' --output out/preds \\
        --label-pattern '(?P<label>\\d)_'                                                # raw files
    rnnstream infer ... --format parquet                                                 # predictions.parquet

The model is an exported ``.onnx`` file or a checkpoint (``rnnstream.api.load_backend`` picks the
backend); its ``ModelInfo`` carries the feature config, so raw files are featurized exactly as in
training and streaming, and a dataset must have been featurized with the same config (checked).

Each input gives one prediction object (``predictions.jsonl``, or ``predictions.parquet`` with
``--format parquet``): ``id``, ``path``, ``predicted`` (the model's answer), ``scores``, ``frames``,
``label`` (the known label, the truth, or null) and ``metadata``. An input is a dataset row, an audio file, or a
sensor table; a table with several gap-separated segments is predicted segment by segment, each from
a fresh state as the streaming runtime does, and the object carries the last segment's prediction
(what ``StreamSession.final()`` returns at the end of the file) plus ``segments``, all of them.

Inputs that fail (unreadable, wrong feature dimension, no frame, an error in the model) are written to
``dead_letter.jsonl``; ``summary.json`` holds ``inputs``, ``outputs``, ``dead_letters`` (always
``inputs == outputs + dead_letters``) and, when labels are known, ``labeled`` and ``accuracy``. A
known label the model does not have (not in its ``labels``) can never be predicted: those predictions
are counted in ``unknown_labels`` (values in ``unknown_label_values``), left out of ``accuracy`` and
named in a warning. The command exits 1 (after writing the summary) when every input became a dead
letter. Raw audio files are decoded within ``--max-seconds``, ``--max-decoded-mb`` and
``--min-sample-rate`` (:class:`~rnnstream.pipeline.audio_io.AudioLimits`).

Graph::

    Create(records | shard paths) -> Featurize (FeaturizeFiles) | ReadShards -> CheckInputs
        -> RunInference(RnnModelHandler).with_exception_handling() -> ToPredictions
    predictions, dead letters (read / check / inference), input counts -> Gather -> Finalize

``RnnModelHandler.load_model`` returns the runtime backend; ``run_inference`` runs whole-sequence mode
(``rnnstream.pipeline.streaming.predict_features``) per example. ``--batch-size`` (default 1) sets how many
examples one ``run_inference`` call gets; a failing call dead-letters all of its examples with the
error. Batches are made before ``RunInference`` (the handler skips Beam's batching): one-item lists at
batch size 1, ``BatchElements`` above it. The DaskRunner drops what a ``DoFn`` emits at bundle end, which
is where ``BatchElements`` emits its last batch, so there the batch size must stay 1 (checked).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult, RunInference
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
    counter_values,
    is_dask_runner,
    job_pipeline,
    prepare_output_dir,
    read_text,
    reject_unknown_args,
    resolve_runner_aliases,
    run_pipeline,
    write_jsonl,
    write_summary,
)
from rnnstream.beam_jobs.featurize import (
    DEAD_LETTERS,
    EXAMPLES,
    FeaturizeFiles,
    InputCount,
)
from rnnstream.beam_jobs.inputs import list_inputs
from rnnstream.beam_jobs.model_handler import InferItem, PredictionRecord, RnnModelHandler, load_model_backend
from rnnstream.beam_jobs.options import (
    PREDICTION_FORMATS,
    add_infer_arguments,
    audio_limits_from_options,
)
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.dataset import (
    DEAD_LETTER_FILE,
    FEATURE_CONFIG_FILE,
    PARQUET_SCHEMA,
    SHARD_PREFIX,
    SUMMARY_FILE,
    Example,
)
from rnnstream.pipeline.errors import (
    ConfigError,
    DatasetError,
    RnnstreamError,
    ShapeError,
)

if TYPE_CHECKING:
    from rnnstream.pipeline.audio_io import AudioLimits
    from rnnstream.pipeline.streaming import Prediction

LOG = logging.getLogger(__name__)

PREDICTIONS_FILE = {fmt: f"predictions.{fmt}" for fmt in PREDICTION_FORMATS}
PREDICTIONS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("path", pa.string()),
        ("predicted", pa.string()),  # the model's answer; JSON text for forecast/generate outputs
        ("scores", pa.list_(pa.float64())),
        ("frames", pa.int64()),
        ("label", pa.string()),  # the known label (the truth), or null
        ("metadata", pa.string()),  # JSON object as text
        ("segments", pa.string()),  # JSON list of per-segment predictions, or null
    ]
)
COUNTERS = ("inputs", "predictions", "dead_letters")


class InferOptions(PipelineOptions):
    """Options of ``rnnstream infer`` besides :class:`InputOptions`.

    The feature config comes from the model, so :class:`FeatureOptions` flags are refused.
    """

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        add_infer_arguments(parser)


# --------------------------------------------------------------------------------------------
# DoFns
# --------------------------------------------------------------------------------------------


class _ReadShardFn(beam.DoFn):
    """A dataset shard -> its rows as :class:`InferItem` s, plus one :class:`InputCount`; bad rows -> dead letters."""

    def __init__(self) -> None:
        self.inputs = Metrics.counter(METRICS_NAMESPACE, "inputs")
        self.dead_letters = Metrics.counter(METRICS_NAMESPACE, "dead_letters")

    def process(self, shard: str) -> Iterator[Any]:
        try:
            with FileSystems.open(shard) as fh:
                table = pq.read_table(pa.BufferReader(fh.read()), schema=PARQUET_SCHEMA)
        except (*INPUT_ERRORS, pa.ArrowException) as err:
            self.inputs.inc()
            self.dead_letters.inc()
            yield InputCount(1)
            yield DeadLetter(path=shard, reason=f"{shard}: not a readable dataset shard ({err})", kind=type(err).__name__)
            return
        rows = table.to_pylist()
        self.inputs.inc(len(rows))
        yield InputCount(len(rows))
        for row in rows:
            try:
                e = Example.from_row(row)
            except (RnnstreamError, ValueError, TypeError) as err:
                self.dead_letters.inc()
                yield DeadLetter.of(str(row.get("id") or shard), err)
                continue
            yield InferItem(id=e.id, path=e.path, label=e.label, metadata=e.metadata, segments=(e.features,))


def _group_examples(element: tuple[str, Iterable[Example]]) -> InferItem:
    """All examples of one raw file (sensor segments, in order) -> one :class:`InferItem`."""
    path, examples = element
    examples = sorted(examples, key=lambda e: int(e.metadata.get("segment", 0)))
    first = examples[0]
    meta = {k: v for k, v in first.metadata.items() if k not in ("segment", "start_time")}
    return InferItem(id=path, path=path, label=first.label, metadata=meta, segments=tuple(e.features for e in examples))


class _CheckItemFn(beam.DoFn):
    """Dead-letter items the model cannot take (feature dimension, no frames) with a typed reason."""

    def __init__(self, dim: int):
        self.dim = dim
        self.dead_letters = Metrics.counter(METRICS_NAMESPACE, "dead_letters")

    def process(self, item: InferItem) -> Iterator[Any]:
        for k, seg in enumerate(item.segments):
            if seg.ndim != 2 or seg.shape[1] != self.dim or seg.shape[0] == 0:
                err = ShapeError(
                    f"{item.id}: segment {k} has features of shape {list(seg.shape)}; the model takes [T >= 1, {self.dim}]"
                )
                self.dead_letters.inc()
                yield DeadLetter.of(item.id, err)
                return
        yield item


def _to_prediction(result: PredictionResult) -> PredictionRecord:
    item: InferItem = result.example  # type: ignore[assignment]  # RnnModelHandler's PredictionResult
    preds: list[Prediction] = result.inference  # type: ignore[assignment]
    last = preds[-1]
    segments = [p.to_dict() for p in preds] if len(preds) > 1 else None
    return PredictionRecord(id=item.id, path=item.path, predicted=last.label, scores=list(last.values),
                            frames=int(sum(p.frames for p in preds)), label=item.label, metadata=item.metadata,
                            segments=segments)


def _is_failed_batch(x: Any) -> bool:
    return isinstance(x, tuple) and not isinstance(x, PredictionResult) and len(x) == 2 and isinstance(x[1], tuple)


def _failed_batch_letters(failed: Any) -> Iterator[DeadLetter]:
    """``(batch, (exc_type, repr, traceback lines))`` from ``with_exception_handling`` -> a dead letter per item."""
    if not _is_failed_batch(failed):  # on the DaskRunner this branch also sees the main output
        return
    batch, (exc_type, exc_repr, tb) = failed
    last = (tb[-1] if tb else exc_repr).rstrip("\n")
    reason = last.split(": ", 1)[1] if ": " in last else exc_repr
    items = batch if isinstance(batch, (list, tuple)) else [batch]
    for item in items:
        yield DeadLetter(path=getattr(item, "id", str(item)), reason=reason, kind=getattr(exc_type, "__name__", str(exc_type)))


#: At most this many unknown label values are listed in ``summary.json`` (all are counted).
MAX_LISTED_LABELS = 20


def accuracy_summary(preds: Sequence[PredictionRecord], model_labels: Sequence[str]) -> dict[str, Any]:
    """``labeled`` and ``accuracy`` over the predictions whose known label is one the model can answer.

    A known label outside ``model_labels`` (when the model has labels) can never be predicted: such
    predictions are counted in ``unknown_labels`` (the values in ``unknown_label_values``, at most
    :data:`MAX_LISTED_LABELS`) and left out of the accuracy instead of lowering it silently.
    """
    labeled = [p for p in preds if p.label is not None and isinstance(p.predicted, str)]
    known = set(model_labels)
    unknown = [p for p in labeled if known and p.label not in known]
    scored = [p for p in labeled if not known or p.label in known]
    out: dict[str, Any] = {}
    if scored:
        out["labeled"] = len(scored)
        out["accuracy"] = sum(p.predicted == p.label for p in scored) / len(scored)
    if unknown:
        out["unknown_labels"] = len(unknown)
        out["unknown_label_values"] = sorted({str(p.label) for p in unknown})[:MAX_LISTED_LABELS]
    return out


class _FinalizeFn(beam.DoFn):
    """Writes the predictions file, dead_letter.jsonl and (last) summary.json; emits the summary."""

    def __init__(self, output_dir: str, fmt: str, model_path: str, weights_hash: str,
                 model_labels: Sequence[str] = ()):
        self.output_dir, self.fmt, self.model_path, self.weights_hash = output_dir, fmt, model_path, weights_hash
        self.model_labels = tuple(model_labels)

    def process(self, element: tuple[None, Sequence[Any]]) -> Iterator[dict[str, Any]]:
        _, items = element
        items = list(items)
        preds = sorted((x for x in items if isinstance(x, PredictionRecord)), key=lambda p: p.id)
        dead = sorted((x for x in items if isinstance(x, DeadLetter)), key=lambda d: (d.path, d.kind))
        inputs = sum(x.n for x in items if isinstance(x, InputCount))
        join = FileSystems.join
        pred_path = join(self.output_dir, PREDICTIONS_FILE[self.fmt])
        if self.fmt == "jsonl":
            write_jsonl(pred_path, (p.to_dict() for p in preds))
        else:
            rows = [{"id": p.id, "path": p.path,
                     "predicted": p.predicted if isinstance(p.predicted, str) else json.dumps(p.predicted),
                     "scores": p.scores, "frames": p.frames, "label": p.label,
                     "metadata": json.dumps(p.metadata, sort_keys=True),
                     "segments": json.dumps(p.segments) if p.segments is not None else None} for p in preds]
            with FileSystems.create(pred_path) as fh:
                pq.write_table(pa.Table.from_pylist(rows, schema=PREDICTIONS_SCHEMA), fh)
        write_jsonl(join(self.output_dir, DEAD_LETTER_FILE), (d.to_dict() for d in dead))
        summary = {
            "inputs": inputs,
            "outputs": len(preds),
            "dead_letters": len(dead),
            "predictions_file": PREDICTIONS_FILE[self.fmt],
            "model": self.model_path,
            "weights_hash": self.weights_hash,
            "dead_letter_kinds": {k: sum(d.kind == k for d in dead) for k in sorted({d.kind for d in dead})},
        }
        summary.update(accuracy_summary(preds, self.model_labels))
        yield write_summary(self.output_dir, summary, "infer")


class _CountFn(beam.DoFn):
    def __init__(self, name: str):
        self.name = name
        self.counter = Metrics.counter(METRICS_NAMESPACE, name)

    def process(self, element: Any) -> Iterator[Any]:
        self.counter.inc()
        yield element


# --------------------------------------------------------------------------------------------
# Public transforms
# --------------------------------------------------------------------------------------------


class ReadDatasetItems(beam.PTransform):
    """Dataset shard paths -> a PCollection mixing :class:`InferItem`, :class:`DeadLetter`, :class:`InputCount`."""

    def expand(self, shards: beam.PCollection) -> beam.PCollection:
        return shards | "ReadShard" >> beam.ParDo(_ReadShardFn())


class FeaturizeItems(beam.PTransform):
    """Raw-file :class:`InputRecord` s -> :class:`InferItem` (one per file), dead letters, input counts (mixed)."""

    def __init__(self, config: FeatureConfig, label_pattern: str | None = None, label: str | None = None, *,
                 limits: AudioLimits | None = None):
        super().__init__(label)
        self.config, self.label_pattern, self.limits = config, label_pattern, limits

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        featurized = records | "FeaturizeFiles" >> FeaturizeFiles(self.config, self.label_pattern, limits=self.limits)
        items = (
            featurized[EXAMPLES]
            | "KeyByFile" >> beam.Map(lambda e: (e.path, e))
            | "GroupByFile" >> beam.GroupByKey()
            | "ToItem" >> beam.Map(_group_examples)
        )
        count = (
            records
            | "CountInputs" >> beam.combiners.Count.Globally().without_defaults()
            | "AsInputCount" >> beam.Map(InputCount)
        )
        return (items, featurized[DEAD_LETTERS], count) | "Merge" >> beam.Flatten()


class PredictItems(beam.PTransform):
    """:class:`InferItem` s -> :class:`PredictionRecord` s and :class:`DeadLetter` s (mixed), via RunInference."""

    def __init__(self, handler: RnnModelHandler, dim: int, label: str | None = None):
        super().__init__(label)
        self.handler, self.dim = handler, dim

    def expand(self, items: beam.PCollection) -> beam.PCollection:
        checked = items | "CheckInputs" >> beam.ParDo(_CheckItemFn(self.dim))
        items = checked | "OnlyItems" >> KeepType(InferItem)
        if self.handler.batch_size == 1:
            batches = items | "Batch" >> beam.Map(lambda item: [item])
        else:
            batches = items | "Batch" >> beam.BatchElements(**self.handler.batch_elements_kwargs())
        results, dlq = batches | "RunInference" >> RunInference(self.handler).with_exception_handling()
        preds = (
            results
            | "OnlyResults" >> KeepType(PredictionResult)
            | "ToPredictions" >> beam.Map(_to_prediction)
            | "CountPredictions" >> beam.ParDo(_CountFn("predictions"))
        )
        failed = (
            dlq.failed_inferences
            | "FailedBatches" >> beam.FlatMap(_failed_batch_letters)
            | "CountFailed" >> beam.ParDo(_CountFn("dead_letters"))
        )
        rejected = checked | "OnlyRejected" >> KeepType(DeadLetter)
        return (preds, failed, rejected) | "Merge" >> beam.Flatten()


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def is_dataset_dir(path: str) -> bool:
    return FileSystems.exists(FileSystems.join(path.rstrip("/"), FEATURE_CONFIG_FILE))


def dataset_shards(inputs: Sequence[str], config: FeatureConfig) -> list[str]:
    """Shard paths of the dataset directories ``inputs``, checking each was featurized with ``config``.

    Raises:
        ConfigError: a dataset's feature config differs from the model's. DatasetError: no shards.
    """
    shards: list[str] = []
    for root in inputs:
        root = root.rstrip("/")
        found = FeatureConfig.from_json(read_text(FileSystems.join(root, FEATURE_CONFIG_FILE)))
        if found != config:
            raise ConfigError(
                f"dataset {root!r} was featurized with {found.to_json()}, but the model expects "
                f"{config.to_json()}; re-run featurize with the model's feature config"
            )
        matched = FileSystems.match([FileSystems.join(root, f"{SHARD_PREFIX}-*.parquet")])[0].metadata_list
        if not matched:
            raise DatasetError(f"dataset {root!r} has no {SHARD_PREFIX}-*.parquet shards")
        shards += sorted(m.path for m in matched)
    return shards


_STALE = (*PREDICTIONS_FILE.values(), DEAD_LETTER_FILE, SUMMARY_FILE)


def infer_corpus(
    model: str,
    inputs: Sequence[str] | None,
    output_dir: str,
    *,
    label_pattern: str | None = None,
    manifest: str | None = None,
    fmt: str = "jsonl",
    batch_size: int = 1,
    threads: int | None = None,
    pipeline_args: Sequence[str] | None = None,
    test_pipeline: beam.Pipeline | None = None,
    limits: AudioLimits | None = None,
) -> dict[str, Any]:
    """Run batch inference; returns ``summary.json`` plus ``"metrics"`` (None when the runner has none).

    ``inputs``: dataset directories (all of them) or raw files/directories/globs (with ``manifest`` or
    ``label_pattern`` for the known labels). ``limits``: decoding bounds of raw audio files (default
    ``AudioLimits()``). Known labels the model does not have are counted in ``unknown_labels``, left out
    of ``accuracy`` and named in a warning.

    Raises:
        ConfigError, DatasetError, CheckpointError: bad options, inputs or model file, before running.
    """
    if fmt not in PREDICTIONS_FILE:
        raise ConfigError(f"--format must be one of {sorted(PREDICTIONS_FILE)}, got {fmt!r}")
    options = PipelineOptions(resolve_runner_aliases(list(pipeline_args or []), BATCH_DEFAULT_RUNNER))
    if batch_size != 1 and is_dask_runner(options):
        raise ConfigError("--batch-size must be 1 on the DaskRunner (it drops batches emitted at bundle end)")
    backend = load_model_backend(model, threads)  # fail early on a bad model file; gives the feature config
    info = backend.info
    if info.input_kind != "features":
        raise ConfigError(f"{model!r} is a raw-audio graph; batch inference takes a features graph or a checkpoint")
    handler = RnnModelHandler(model, batch_size=batch_size, threads=threads)
    datasets, shards, records = _infer_inputs(list(inputs or []), manifest, label_pattern, info.feature_config)
    prepare_output_dir(output_dir, _STALE)

    with job_pipeline(options, test_pipeline) as pipeline:
        if datasets:
            mixed = (pipeline | "ListShards" >> beam.Create(shards, reshuffle=True)
                     | "ReadDataset" >> ReadDatasetItems())
        else:
            mixed = (pipeline | "ListInputs" >> beam.Create(records, reshuffle=True)
                     | "Featurize" >> FeaturizeItems(info.feature_config, label_pattern, limits=limits))
        items = mixed | "OnlyItems" >> KeepType(InferItem)
        early = mixed | "OnlyEarlyLetters" >> KeepType(DeadLetter, InputCount)
        outcomes = items | "Predict" >> PredictItems(handler, info.feature_config.dim)
        _ = (
            (outcomes, early)
            | "Gather" >> Gather()
            | "Finalize" >> beam.ParDo(_FinalizeFn(output_dir, fmt, model, info.weights_hash, info.labels))
        )
        result = run_pipeline(pipeline)
    summary = json.loads(read_text(FileSystems.join(output_dir, SUMMARY_FILE)))
    if summary.get("unknown_labels"):
        LOG.warning(
            "infer: %d prediction(s) have a known label the model never saw (%s; the model's labels are %s); "
            "they are left out of the accuracy", summary["unknown_labels"],
            ", ".join(repr(v) for v in summary["unknown_label_values"]), list(info.labels),
        )
    summary["metrics"] = counter_values(result, COUNTERS)
    return summary


def _infer_inputs(ins: list[str], manifest: str | None, label_pattern: str | None,
                  feature_config: Any) -> tuple[list[str], list[str], list[InputRecord]]:
    """``(dataset directories, their shards, raw input records)``: either datasets or raw files, never both.

    Raises:
        ConfigError: datasets mixed with raw files, or labelled by a pattern or manifest.
        DatasetError: a dataset without shards, raw inputs that match nothing.
    """
    datasets = [p for p in ins if is_dataset_dir(p)]
    if datasets and len(datasets) != len(ins):
        raise ConfigError("--input: give either dataset directories or raw files, not both")
    if datasets and (label_pattern or manifest):
        raise ConfigError("--label-pattern/--manifest apply to raw files; a dataset already holds its labels")
    if datasets:
        return datasets, dataset_shards(datasets, feature_config), []
    return [], [], list_inputs(ins, manifest, label_pattern)


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict[str, Any]:
    """Parse ``argv`` (job flags and Beam options together), run the job, return the summary dict."""
    argv = resolve_runner_aliases(list(argv if argv is not None else sys.argv[1:]), BATCH_DEFAULT_RUNNER)
    reject_unknown_args(argv)
    options = PipelineOptions(argv)
    io_opts = options.view_as(InputOptions)
    opts = options.view_as(InferOptions)
    if not opts.model:
        raise ConfigError("--model MODEL(.onnx|.pt) is required")
    feature_flags = sorted(k for k, v in options.view_as(FeatureOptions).get_all_options(current_only=True).items()
                           if v not in (None, False))
    if feature_flags:
        raise ConfigError(f"feature options {feature_flags} do not apply to infer: the model's feature config is used")
    if not io_opts.output:
        raise ConfigError("--output DIR is required")
    return infer_corpus(
        opts.model, io_opts.inputs, io_opts.output, label_pattern=io_opts.label_pattern, manifest=io_opts.manifest,
        fmt=opts.format, batch_size=opts.batch_size, threads=opts.threads, pipeline_args=argv,
        test_pipeline=test_pipeline, limits=audio_limits_from_options(opts),
    )


def main(argv: list[str] | None = None) -> int:
    """``rnnstream infer`` (parsing, logging and exit status: :data:`rnnstream.beam_jobs.cli.INFER`)."""
    from rnnstream.beam_jobs.cli import INFER

    return INFER.main(argv)


if __name__ == "__main__":
    sys.exit(main())

"""A featurized dataset -> training / validation / test :class:`TaskData` (what ``rnnstream train`` does).

::

    data = prepare_data("features/", DataSpec(task="classify", val_by="speaker", val_match="george"))
    data.train, data.val, data.test, data.feature_config, data.stats
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

from rnnstream.models.data import TaskData, channel_names, resolve_channels, select_channels, sub_config
from rnnstream.models.splits import split_examples
from rnnstream.models.tasks import TaskSpec, task_for
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.dataset import Example
from rnnstream.pipeline.errors import ConfigError
from rnnstream.pipeline.stats import RunningStats


@dataclass(frozen=True)
class DataSpec:
    """How to turn a featurized dataset into training/validation/test data.

    Attributes:
        task: classify (``Example.label``), tag (per-frame labels in metadata ``frame_labels``),
            forecast (windows: ``window`` input frames, ``horizon``, ``targets``), generate (next frame).
        val_fraction: random share of examples held out for validation (when ``val_by`` is not set).
        val_by, val_match: validation = examples whose field ``val_by`` fully matches regex ``val_match``.
        test_by, test_match: a held-out test split, the same way (taken out first).
        channels: input channels (names or indices; forecast/generate on sensor data), default all.
        targets: forecast target channels (names or indices of the data's channels, included in ``channels``).
        split_rows: forecast row ranges ``((a, b), (c, d)[, (e, f)])`` for train/val[/test] within each series.
        forecast_loss: ``all`` frames of a training window or its ``last`` frame only.
        stats: ``train`` (fit on the training split) or ``dataset`` (the dataset's stats.json).
        wave_copies: audio only: add this many waveform-perturbed copies (speed, noise) of each *training*
            file, re-read from its path and featurized again
            (:func:`rnnstream.models.wave_augment.augment_audio_examples`).
        wave_speed: the copies' speed-perturbation range ``(lo, hi)`` (factors within [0.5, 2]).
        wave_pitch: the copies' pitch-shift range ``(lo, hi)`` in semitones (``(0, 0)``: none).
        wave_quiet: the range ``(lo, hi)`` of seconds of quiet (a noise floor 30-60 dB below the recording) added
            before and after each copy, each end drawn apart (``(0, 0)``: none).
        extra_train: featurized datasets (folders) whose examples join the *training* split only, never validation
            or test: more speakers or recording conditions, e.g. synthetic voices (``experiments.synth_digits``).
            Each must have the main dataset's feature config. Whole-example tasks only (not ``split_rows``).
    """

    task: str = "classify"
    val_fraction: float = 0.1
    val_by: str | None = None
    val_match: str | None = None
    test_by: str | None = None
    test_match: str | None = None
    frame_labels: str = "frame_labels"
    channels: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    window: int = 96
    horizon: int = 24
    split_rows: tuple[tuple[int, int], ...] = ()
    forecast_loss: Literal["all", "last"] = "all"
    stats: Literal["train", "dataset"] = "train"
    seed: int = 0
    wave_copies: int = 0
    wave_speed: tuple[float, float] = (0.9, 1.1)
    wave_pitch: tuple[float, float] = (0.0, 0.0)
    wave_quiet: tuple[float, float] = (0.0, 0.0)
    extra_train: tuple[str, ...] = ()


@dataclass
class PreparedData:
    train: TaskData
    val: TaskData | None
    test: TaskData | None
    feature_config: FeatureConfig
    stats: RunningStats


def prepare_data(root: str, spec: DataSpec) -> PreparedData:
    """Read the dataset at ``root`` and split/shape it per ``spec`` (see :class:`DataSpec`).

    Raises:
        ConfigError: an unknown task or channel, a forecast without targets, malformed splits.
        DatasetError: the dataset is missing/empty, a split matched nothing, targets are missing.
    """
    from rnnstream.pipeline.dataset import read_dataset

    task = task_for(spec.task)
    rows = bool(spec.split_rows) and task.row_splits
    if rows and spec.extra_train:
        raise ConfigError("extra_train adds whole examples to the training split; row splits (split_rows) have no "
                          "such split")
    ds = read_dataset(root)
    examples = list(ds.examples)
    extra = _extra_examples(spec.extra_train, ds.config)
    fc = ds.config
    names = channel_names(fc)
    dims = resolve_channels(list(spec.channels), names) if spec.channels else list(range(fc.dim))
    if dims != list(range(fc.dim)):
        fc = sub_config(fc, dims)
        examples, extra = select_channels(examples, dims), select_channels(extra, dims)
    target_dims = task.target_channels(spec, [names[d] for d in dims])
    val: TaskData | None
    if rows:
        train, val, test = _by_rows(task, examples, spec, fc, target_dims)
    else:
        train, val, test = _by_examples(task, examples, spec, fc, target_dims, where=repr(root), extra=extra)
    if spec.stats == "dataset":
        stats = RunningStats(ds.stats.count, ds.stats.mean[dims], ds.stats.m2[dims])
    else:
        stats = train.fit_stats()
    return PreparedData(train, val, test, fc, stats)


def _by_rows(task: TaskSpec, examples: list[Example], spec: DataSpec, fc: FeatureConfig,
             target_dims: list[int]) -> tuple[TaskData, TaskData, TaskData | None]:
    """Row ranges within each series (the Informer protocol): train, val[, test]."""
    if len(spec.split_rows) not in (2, 3):
        raise ConfigError(f"split_rows needs 2 or 3 row ranges (train, val[, test]), got {len(spec.split_rows)}")

    def part(i: int, last_only: bool) -> TaskData:
        return task.make_data(examples, spec, labels=None, last_only=last_only, feature_config=fc,
                              target_dims=target_dims, rows=spec.split_rows[i])

    train, val = part(0, spec.forecast_loss == "last"), part(1, True)
    return train, val, part(2, True) if len(spec.split_rows) == 3 else None


def _by_examples(task: TaskSpec, examples: list[Example], spec: DataSpec, fc: FeatureConfig, target_dims: list[int],
                 where: str, extra: Sequence[Example] = ()) -> tuple[TaskData, TaskData | None, TaskData | None]:
    """Whole examples to train / val / test (``extra``: more training examples, after the waveform copies); val and
    test use the training labels."""
    train_ex, val_ex, test_ex = split_examples(
        examples, val_fraction=spec.val_fraction, val_by=spec.val_by, val_match=spec.val_match,
        test_by=spec.test_by, test_match=spec.test_match, seed=spec.seed, where=where,
    )

    def build(ex: list[Example], labels: tuple[str, ...] | None, last_only: bool) -> TaskData:
        return task.make_data(ex, spec, labels=labels, last_only=last_only, feature_config=fc, target_dims=target_dims)

    if spec.wave_copies:
        train_ex = _wave_copies(train_ex, spec, fc)
    train = build(train_ex + list(extra), None, spec.forecast_loss == "last")
    labels = train.labels or None
    val = build(val_ex, labels, True) if val_ex else None
    test = build(test_ex, labels, True) if test_ex else None
    return train, val, test


def _extra_examples(roots: tuple[str, ...], config: FeatureConfig) -> list[Example]:
    """The examples of the ``extra_train`` datasets, each featurized with ``config`` (the main dataset's)."""
    from rnnstream.pipeline.dataset import read_dataset

    out: list[Example] = []
    for root in roots:
        ds = read_dataset(root)
        if ds.config != config:
            raise ConfigError(f"extra training dataset {root!r} was featurized with {ds.config.to_dict()}; the "
                              f"dataset trained on with {config.to_dict()}: featurize it with the same config")
        out += ds.examples
    return out


def _wave_copies(train_ex: list[Example], spec: DataSpec, fc: FeatureConfig) -> list[Example]:
    from rnnstream.models.wave_augment import WaveAugment, augment_audio_examples

    if fc.kind != "audio" or spec.channels:
        raise ConfigError("wave_copies (waveform augmentation) needs audio features with every channel")
    return augment_audio_examples(train_ex, fc, spec.wave_copies, spec.seed,
                                  wave=WaveAugment(speed=_range(spec.wave_speed), pitch=_range(spec.wave_pitch),
                                                   quiet_s=_range(spec.wave_quiet)))


def _range(values: Sequence[float]) -> tuple[float, float]:
    """A ``(lo, hi)`` range as a tuple (the spec may hold a list, e.g. from a command line); WaveAugment checks
    that it is one, naming the field and the value."""
    return cast(tuple[float, float], tuple(values))


__all__ = ["DataSpec", "PreparedData", "prepare_data"]

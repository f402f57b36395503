"""Typed errors raised at rnnstream's boundaries.

Every error names the offending file or value and what was expected. Pipelines catch
:class:`RnnstreamError` and turn it into a dead-letter record whose ``reason`` is ``str(error)``
and whose ``kind`` is the class name.
"""

from __future__ import annotations


class RnnstreamError(ValueError):
    """Base class of every user-facing input error."""


class ConfigError(RnnstreamError):
    """A configuration value is out of range or inconsistent."""


class AudioError(RnnstreamError):
    """Audio input could not be used."""


class EmptyAudioError(AudioError):
    """The file or chunk holds no samples."""


class CorruptAudioError(AudioError):
    """The file is truncated, corrupt or not audio at all (e.g. a text file named ``.wav``)."""


class UnsupportedFormatError(AudioError):
    """The container or sample format is not supported."""


class NonFiniteSamplesError(AudioError):
    """Samples contain NaN or Inf."""


class ChannelError(AudioError):
    """The channel count does not match what was asked for."""


class SampleRateError(AudioError):
    """The sample rate differs from the configured one and resampling is off."""


class SensorError(RnnstreamError):
    """A sensor table or chunk could not be used."""


class MissingColumnsError(SensorError):
    """Required columns are absent from a sensor table."""


class NonNumericError(SensorError):
    """A sensor column holds values that are not numbers."""


class TimestampError(SensorError):
    """Timestamps are not strictly increasing (non-monotonic or duplicated)."""


class ShapeError(RnnstreamError):
    """A tensor has the wrong shape, dtype or feature dimension."""


class StateError(RnnstreamError):
    """A state or snapshot does not belong to this model, or has the wrong shape."""


class MessageError(RnnstreamError):
    """A stream message is not valid JSON, lacks a field, or has a field of the wrong type, dtype or shape."""


class PayloadError(MessageError):
    """A message's payload does not fit the model: wrong size, channel count, dtype, or NaN/Inf values."""


class ModelMismatchError(MessageError):
    """A message names a model (``weights_hash``) other than the one running."""


class StreamIdError(MessageError):
    """A stream id is empty, too long, holds control characters or path separators, or is ``.``/``..``."""


class OrderingError(RnnstreamError):
    """A chunk that cannot be placed in its stream: after end-of-stream, too far ahead, or too late."""


class ResumeError(RnnstreamError):
    """A resume for a stream that is already active, or whose snapshot cannot be restored."""


class DatasetError(RnnstreamError):
    """A featurized dataset is missing, empty or inconsistent."""


class CheckpointError(RnnstreamError):
    """A checkpoint or ONNX file is corrupt, truncated or of another format."""


class TrainingDivergedError(RnnstreamError):
    """Training produced a non-finite loss or gradient (too high a learning rate, extreme data)."""


class ExportError(RnnstreamError):
    """An exported graph disagrees with the PyTorch model beyond the tolerance (the message names both)."""


class MissingExtraError(RnnstreamError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def require(module: str, extra: str, what: str) -> None:
    """Raise :class:`MissingExtraError` unless ``module`` can be imported.

    ``what`` says what needed it, e.g. ``require("torch", "train", "loading a .pt checkpoint")``.
    """
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{what} needs {module!r}, which is not installed: pip install 'rnnstream[{extra}]'"
        ) from None


class AudioLimitError(AudioError):
    """Decoding the audio would pass a bound of :class:`rnnstream.pipeline.audio_io.AudioLimits`."""


class AudioTooLongError(AudioLimitError):
    """The file is longer than ``AudioLimits.max_seconds`` (checked from the header, before decoding)."""


class AudioTooLargeError(AudioLimitError):
    """The file, its decoded samples or their resampled copy would take more than ``AudioLimits.max_bytes``."""


class SampleRateTooLowError(AudioLimitError, SampleRateError):
    """The file's sample rate is below ``AudioLimits.min_rate`` (resampling it up would blow up its size)."""


class InputFileError(RnnstreamError):
    """An input path is not a regular file that can be read."""


class SpecialFileError(InputFileError):
    """The path is a FIFO, socket, device or directory: opening or reading it could block or fail."""


class BrokenLinkError(InputFileError):
    """The path is a dangling symbolic link or a symbolic-link loop."""


class FileNameError(InputFileError):
    """The file name is not valid UTF-8, so it cannot be an example id or a Parquet ``path`` value."""

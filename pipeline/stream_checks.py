"""What may reach a stream: the stream id rule, the chunk message and its checks against the model.

Transport-free (the Beam job parses JSON lines into :class:`ChunkMessage`, the server its frames): every
check here is what keeps one bad message from breaking a stream or the job that carries it. A message that
passes :func:`check_message` holds only finite arrays of the dtype and shape the model's session takes.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from rnnstream.pipeline.codec import all_finite
from rnnstream.pipeline.errors import (
    MessageError,
    ModelMismatchError,
    PayloadError,
    StreamIdError,
)

MessageKind = Literal["chunk", "resume"]
#: Longest stream id, in characters.
MAX_STREAM_ID = 256
#: Largest ``seq`` (exactly representable as a JSON number everywhere).
MAX_SEQ = 2**53
#: Event times are seconds since the epoch in ``[0, MAX_EVENT_TIME]`` (year 5138; Beam timestamps end near 2.9e11).
MAX_EVENT_TIME = 1e11
#: Highest declared sample rate (Hz); a larger one would build an absurd resampling filter.
MAX_SAMPLE_RATE = 384_000


@dataclass(frozen=True, eq=False)
class ChunkMessage:
    """A parsed message. ``audio`` is float32 ``[S]``; ``timestamps``/``values`` float64 ``[N]``/``[N, C]``;
    ``sample_rate`` the declared rate of the stream's samples (Hz), or None when the message does not say."""

    stream: str
    seq: int
    event_time: float
    kind: MessageKind = "chunk"
    end: bool = False
    model: str | None = None
    audio: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    values: np.ndarray | None = None
    snapshot: bytes | None = None
    sample_rate: int | None = None

    @property
    def size(self) -> int:
        """Samples (audio) or rows (sensor) in the payload."""
        if self.audio is not None:
            return int(self.audio.shape[0])
        if self.timestamps is not None:
            return int(self.timestamps.shape[0])
        return 0

    def describe(self) -> str:
        return f"stream {self.stream!r} seq {self.seq}"


def check_stream_id(stream: Any) -> str:
    """``stream`` if it is a usable stream id, else :class:`StreamIdError` naming the rule it breaks.

    A stream id is 1 to :data:`MAX_STREAM_ID` characters without control or format characters (no newlines,
    NULs, escape sequences, bidi overrides), without ``/`` or ``\\\\``, and is not ``.`` or ``..``: adapters use it
    as a key, a metric name and (the server) a file name, so it must be safe as all three.
    """
    if type(stream) is str and stream in _VALID_IDS:  # every chunk of a stream names it: check it once
        return stream
    if not isinstance(stream, str) or not stream:
        raise StreamIdError(f"'stream' must be a non-empty string, got {short_repr(stream)}")
    if len(stream) > MAX_STREAM_ID:
        raise StreamIdError(f"'stream' is {len(stream)} characters long; at most {MAX_STREAM_ID} are allowed")
    bad = next((c for c in stream if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")), None)
    if bad is not None:
        raise StreamIdError(f"'stream' {short_repr(stream)} holds the control character U+{ord(bad):04X}; "
                            "stream ids must be printable")
    if "/" in stream or "\\" in stream or stream in (".", ".."):
        raise StreamIdError(f"'stream' {short_repr(stream)} is refused: stream ids may not contain '/' or '\\' "
                            "nor be '.' or '..' (they name files)")
    if type(stream) is str:
        if len(_VALID_IDS) >= _MAX_REMEMBERED:
            _VALID_IDS.clear()
        _VALID_IDS.add(stream)
    return stream


#: Stream ids already found valid (bounded: forgotten all at once past :data:`_MAX_REMEMBERED`).
_VALID_IDS: set[str] = set()
_MAX_REMEMBERED = 1 << 16


def short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def check_head(stream: Any, seq: Any, event_time: Any) -> None:
    """The fields every message has: a valid stream id, ``0 <= seq <= MAX_SEQ``, a bounded event time."""
    check_stream_id(stream)
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
        raise MessageError(f"stream {stream!r}: 'seq' must be an integer from 0 to 2**53, got {short_repr(seq)}")
    ok = isinstance(event_time, (int, float)) and not isinstance(event_time, bool)
    if not ok or not 0 <= event_time <= MAX_EVENT_TIME:  # compares big ints exactly, NaN fails
        raise MessageError(f"stream {stream!r} seq {seq}: 'event_time' must be a finite number of seconds since "
                           f"the epoch, from 0 to {MAX_EVENT_TIME:.0e}, got {short_repr(event_time)}")


def check_sample_rate(rate: Any, where: str) -> int | None:
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, int) or not 0 < rate <= MAX_SAMPLE_RATE:
        raise MessageError(f"{where}: 'sample_rate' must be a positive integer (Hz) up to {MAX_SAMPLE_RATE}, "
                           f"got {short_repr(rate)}")
    return rate


_AUDIO_DTYPES = (np.dtype(np.float32),)
_SENSOR_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))


def _check_array(arr: Any, where: str, ndim: int, kind: str) -> None:
    allowed = _AUDIO_DTYPES if kind == "audio" else _SENSOR_DTYPES  # dtype objects: `.name` costs ~1 us a call
    if not isinstance(arr, np.ndarray) or arr.dtype not in allowed or arr.ndim != ndim:
        dtypes = [d.name for d in allowed]
        got = f"{arr.dtype} {list(arr.shape)}" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise PayloadError(f"{where}: expected {' or '.join(dtypes)} with {ndim} dimension(s), got {got}")
    if not all_finite(arr):
        bad = int((~np.isfinite(arr)).sum())
        raise PayloadError(f"{where}: {bad} of {arr.size} values are NaN or Inf; expected finite numbers")


def _check_payload(msg: ChunkMessage, info: Any, where: str) -> None:
    kind = info.feature_config.kind
    if kind == "audio" and msg.timestamps is not None:
        raise PayloadError(f"{where}: sensor payload for an audio model; expected 'audio'")
    if kind == "sensor" and msg.audio is not None:
        raise PayloadError(f"{where}: audio payload for a sensor model; expected 'sensor'")
    if msg.audio is not None:
        _check_array(msg.audio, f"{where}: audio", 1, "audio")
    if msg.timestamps is not None:
        _check_array(msg.timestamps, f"{where}: sensor.timestamps", 1, "sensor")
        _check_array(msg.values, f"{where}: sensor.values", 2, "sensor")
        if msg.values.shape[0] != msg.timestamps.shape[0]:  # type: ignore[union-attr]
            raise PayloadError(f"{where}: {msg.timestamps.shape[0]} timestamps but {msg.values.shape[0]} value rows")  # type: ignore[union-attr]
        n_channels = len(info.feature_config.sensor.columns)
        if msg.values.shape[0] and msg.values.shape[1] != n_channels:  # type: ignore[union-attr]
            raise PayloadError(
                f"{where}: sensor values have {msg.values.shape[1]} channel(s); the model expects {n_channels} "  # type: ignore[union-attr]
                f"({', '.join(info.feature_config.sensor.columns)})")


def check_message(msg: ChunkMessage, info: Any, chunk_size: int | None = None) -> None:
    """Every check of ``msg`` against the model ``info`` (a ``ModelInfo``) that does not need the stream's state.

    ``chunk_size``: when given, every chunk but the last (``end``) must hold exactly that many samples (audio)
    or rows (sensor); the last may hold fewer.

    Raises:
        StreamIdError, MessageError: a bad stream id, ``seq``, ``event_time`` or ``sample_rate``; a resume of an
            audio stream without ``sample_rate``.
        ModelMismatchError: ``msg.model`` is set and is not ``info.weights_hash``.
        PayloadError: audio for a sensor model or the reverse, a payload that is not a finite float array of the
            expected shape, the wrong channel count or size, a ``sample_rate`` for a sensor model.

    Whether a chunk that opens an audio stream carries ``sample_rate`` is checked where the stream's state is
    known (:class:`rnnstream.pipeline.stream_core.StreamCore`).
    """
    check_head(msg.stream, msg.seq, msg.event_time)
    where = msg.describe()
    check_sample_rate(msg.sample_rate, where)
    if msg.model is not None and msg.model != info.weights_hash:
        raise ModelMismatchError(
            f"{where}: names model {short_repr(msg.model)}, but this job runs model {info.weights_hash!r} "
            "(unknown model version)")
    kind = info.feature_config.kind
    if kind == "sensor" and msg.sample_rate is not None:
        raise PayloadError(f"{where}: 'sample_rate' was given for a sensor model; sensor rows carry their own "
                           "timestamps (leave it out)")
    if msg.kind == "resume":
        if kind == "audio" and msg.sample_rate is None:
            raise MessageError(f"{where}: a resume message of an audio stream must carry 'sample_rate' (Hz, the "
                               f"stream's rate as stated in its eviction record); this model runs at "
                               f"{info.feature_config.audio.sample_rate} Hz")
        if not isinstance(msg.snapshot, (bytes, bytearray)):
            raise MessageError(f"{where}: a resume message must carry a snapshot")
        return
    check_payload(msg, info, chunk_size)


def check_payload(msg: ChunkMessage, info: Any, chunk_size: int | None = None) -> None:
    """The payload checks of :func:`check_message` alone (for an adapter whose transport already checked the
    head, e.g. the server's binary frames): the payload fits the model's kind, is a finite float array of the
    expected dtype and shape (sensor: the model's channel count) and, with ``chunk_size``, of that size.

    Raises:
        PayloadError: as in :func:`check_message`.
    """
    where = msg.describe()
    _check_payload(msg, info, where)
    if chunk_size:
        n = msg.size
        if (n != chunk_size and not msg.end) or n > chunk_size:
            unit = "samples" if info.feature_config.kind == "audio" else "rows"
            raise PayloadError(
                f"{where}: payload holds {n} {unit}; expected exactly {chunk_size} (the last chunk: at most "
                f"{chunk_size})")


def payload_of(msg: ChunkMessage, info: Any) -> Any:
    """What the session is pushed for a checked chunk: float32 samples, or a SensorChunk (empty for a marker)."""
    from rnnstream.pipeline.streaming import SensorChunk

    n = len(info.feature_config.sensor.columns) if info.feature_config.kind == "sensor" else 0
    if msg.timestamps is not None:
        values = msg.values if msg.values is not None and msg.values.shape[0] else np.zeros((0, n), np.float64)
        return SensorChunk(msg.timestamps, values)
    if msg.audio is not None:
        return msg.audio
    if info.feature_config.kind == "sensor":
        return SensorChunk(np.zeros(0, np.float64), np.zeros((0, n), np.float64))
    return np.zeros(0, np.float32)



__all__ = ["MAX_EVENT_TIME", "MAX_SAMPLE_RATE", "MAX_SEQ", "MAX_STREAM_ID", "ChunkMessage", "MessageKind",
           "check_head", "check_message", "check_payload", "check_sample_rate", "check_stream_id", "payload_of",
           "short_repr"]

"""Chunk messages of the Beam streaming job: parse, validate, encode.

One message is one JSON object (one line of a ``.jsonl`` file, one Pub/Sub message, one Kafka record
value)::

    {"stream": "mic-7", "seq": 12, "event_time": 1764072000.1,
     "audio": {"dtype": "int16", "data": "<base64>"}}
    {"stream": "pump-3", "seq": 4, "event_time": 1764072004.0, "end": true,
     "sensor": {"timestamps": [4.0, 4.5], "values": [[0.1, 20.3], [0.2, 20.1]]}}
    {"kind": "resume", "stream": "mic-7", "seq": 40, "event_time": 1764072100.0, "snapshot": "<base64>"}

Fields:

* ``stream`` (string, required, non-empty): the stream id, the key of all per-stream state.
* ``seq`` (integer >= 0, required): the chunk's position in its stream, from 0 with no holes.
* ``event_time`` (number, required): seconds since the Unix epoch (float) when the chunk was recorded.
* ``kind``: ``"chunk"`` (default) or ``"resume"`` (restore a stream from an eviction snapshot).
* ``end`` (bool, default false): this is the stream's last chunk.
* ``model`` (string, optional): the ``weights_hash`` of the model the sender expects; a mismatch sends
  the message to the dead letters.
* ``audio`` (audio models): mono samples as an *array* (below); ``float32`` taken as is, ``int16``
  divided by 32768.
* ``sensor`` (sensor models): ``{"timestamps": ARRAY [N] (seconds), "values": ARRAY [N, C]}`` with
  ``C`` the configured channel columns, in order.
* ``snapshot`` (``kind: "resume"`` only): the base64 ``StreamSession.snapshot()`` bytes of an
  eviction record; ``seq`` is then the next sequence number the stream expects.

An *array* is either a JSON list of numbers (nested for ``[N, C]``) or an object
``{"dtype": D, "data": BASE64, "shape": [..]}`` of little-endian raw bytes; ``D`` is ``float32`` or
``int16`` for audio, ``float64`` or ``float32`` for sensor timestamps and values (``shape`` is
required for ``[N, C]`` values and optional otherwise). Nothing else is accepted: other dtypes, NaN or
Inf, a ragged list or a wrong shape are errors naming the field.

Errors are :class:`MessageError` (a :class:`rnnstream.pipeline.errors.RnnstreamError`), so the pipeline turns them
into dead letters whose ``kind`` is the class name.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from rnnstream.pipeline.errors import RnnstreamError

MessageKind = Literal["chunk", "resume"]

AUDIO_DTYPES = {"float32": np.dtype("<f4"), "int16": np.dtype("<i2")}
SENSOR_DTYPES = {"float64": np.dtype("<f8"), "float32": np.dtype("<f4")}
_KNOWN_FIELDS = {"stream", "seq", "event_time", "kind", "end", "model", "audio", "sensor", "snapshot"}


class MessageError(RnnstreamError):
    """A message is not valid JSON, lacks a field, or has a field of the wrong type, dtype or shape."""


class PayloadError(MessageError):
    """The payload does not fit the model: wrong size, channel count, dtype, or NaN/Inf values."""


class ModelMismatchError(MessageError):
    """The message names a model (``weights_hash``) other than the one this job runs."""


@dataclass(frozen=True, eq=False)
class ChunkMessage:
    """A parsed message. ``audio`` is float32 ``[S]``; ``timestamps``/``values`` float64 ``[N]``/``[N, C]``."""

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


# ----------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------


def _b64(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        raise MessageError(f"{where}: expected a base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise MessageError(f"{where}: not valid base64 ({exc})") from None


def decode_array(obj: Any, dtypes: dict[str, np.dtype], where: str, ndim: int) -> np.ndarray:
    """An *array* field (list, or ``{"dtype", "data", "shape"}``) as a float array with ``ndim`` axes."""
    if isinstance(obj, list):
        try:
            arr = np.asarray(obj, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"{where}: expected a (rectangular) list of numbers ({exc})") from None
        if arr.size == 0:
            arr = arr.reshape((0,) * ndim)
    elif isinstance(obj, dict):
        unknown = set(obj) - {"dtype", "data", "shape"}
        if unknown:
            raise MessageError(f"{where}: unknown keys {sorted(unknown)}; expected dtype, data, shape")
        name = obj.get("dtype")
        if name not in dtypes:
            raise PayloadError(f"{where}: dtype {name!r} is not accepted here; expected one of {sorted(dtypes)}")
        raw = _b64(obj.get("data"), f"{where}.data")
        dt = dtypes[name]
        if len(raw) % dt.itemsize:
            raise PayloadError(f"{where}: {len(raw)} bytes is not a whole number of {name} values")
        arr = np.frombuffer(raw, dtype=dt)
        shape = obj.get("shape")
        if shape is not None:
            if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
                raise MessageError(f"{where}.shape: expected a list of non-negative integers, got {shape!r}")
            if math.prod(shape) != arr.size:
                raise PayloadError(f"{where}: shape {shape} does not match {arr.size} values")
            arr = arr.reshape(shape)
        arr = arr.astype(np.float32 if name in ("float32", "int16") else np.float64)
        if name == "int16":
            arr = arr / np.float32(32768.0)
    else:
        raise MessageError(f"{where}: expected a list of numbers or a {{dtype, data}} object, got {type(obj).__name__}")
    if arr.ndim != ndim:
        raise PayloadError(f"{where}: expected {ndim} dimension(s), got shape {list(arr.shape)}")
    if arr.size and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise PayloadError(f"{where}: {bad} of {arr.size} values are NaN or Inf; expected finite numbers")
    return arr


def parse_message(line: str | bytes) -> ChunkMessage:
    """Parse and structurally validate one message (model-independent checks only).

    Raises:
        MessageError: invalid JSON, missing or mistyped fields, both or neither payloads.
        PayloadError: bad dtype, shape, ragged lists, NaN/Inf.
    """
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MessageError(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MessageError(f"a message must be a JSON object, got {type(obj).__name__}")
    unknown = set(obj) - _KNOWN_FIELDS
    if unknown:
        raise MessageError(f"unknown fields {sorted(unknown)}; expected some of {sorted(_KNOWN_FIELDS)}")
    stream = obj.get("stream")
    if not isinstance(stream, str) or not stream:
        raise MessageError(f"'stream' must be a non-empty string, got {stream!r}")
    seq = obj.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise MessageError(f"stream {stream!r}: 'seq' must be an integer >= 0, got {seq!r}")
    et = obj.get("event_time")
    if not isinstance(et, (int, float)) or isinstance(et, bool) or not math.isfinite(et):
        raise MessageError(f"stream {stream!r} seq {seq}: 'event_time' must be a finite number of seconds, got {et!r}")
    kind = obj.get("kind", "chunk")
    if kind not in ("chunk", "resume"):
        raise MessageError(f"stream {stream!r} seq {seq}: 'kind' must be 'chunk' or 'resume', got {kind!r}")
    end = obj.get("end", False)
    if not isinstance(end, bool):
        raise MessageError(f"stream {stream!r} seq {seq}: 'end' must be true or false, got {end!r}")
    model = obj.get("model")
    if model is not None and not isinstance(model, str):
        raise MessageError(f"stream {stream!r} seq {seq}: 'model' must be a string, got {model!r}")
    where = f"stream {stream!r} seq {seq}"
    if kind == "resume":
        if "audio" in obj or "sensor" in obj:
            raise MessageError(f"{where}: a resume message carries a snapshot, not a payload")
        snap = _b64(obj.get("snapshot"), f"{where}: snapshot")
        return ChunkMessage(stream, seq, float(et), "resume", end, model, snapshot=snap)
    if "snapshot" in obj:
        raise MessageError(f"{where}: 'snapshot' belongs to kind 'resume' messages only")
    if "audio" in obj and "sensor" in obj:
        raise MessageError(f"{where}: a chunk carries 'audio' or 'sensor', not both")
    if "audio" in obj:
        audio = decode_array(obj["audio"], AUDIO_DTYPES, f"{where}: audio", 1).astype(np.float32, copy=False)
        return ChunkMessage(stream, seq, float(et), "chunk", end, model, audio=audio)
    if "sensor" in obj:
        sensor = obj["sensor"]
        if not isinstance(sensor, dict) or set(sensor) != {"timestamps", "values"}:
            raise MessageError(f"{where}: 'sensor' must be an object with exactly 'timestamps' and 'values'")
        ts = decode_array(sensor["timestamps"], SENSOR_DTYPES, f"{where}: sensor.timestamps", 1).astype(np.float64)
        vals = decode_array(sensor["values"], SENSOR_DTYPES, f"{where}: sensor.values", 2).astype(np.float64)
        if vals.shape[0] != ts.shape[0]:
            raise PayloadError(f"{where}: {ts.shape[0]} timestamps but {vals.shape[0]} value rows")
        return ChunkMessage(stream, seq, float(et), "chunk", end, model, timestamps=ts, values=vals)
    if not end:
        raise MessageError(f"{where}: a chunk needs an 'audio' or 'sensor' payload (only an end marker may omit it)")
    return ChunkMessage(stream, seq, float(et), "chunk", end, model)


def validate_for_model(msg: ChunkMessage, info: Any, chunk_size: int | None = None) -> None:
    """Model-dependent checks of a chunk against ``info`` (a ``rnnstream.pipeline.streaming.ModelInfo``).

    ``chunk_size``: when given, every chunk but the last (``end``) must hold exactly that many samples
    (audio) or rows (sensor); the last may hold fewer.

    Raises:
        ModelMismatchError: ``msg.model`` is set and is not ``info.weights_hash``.
        PayloadError: audio for a sensor model or the reverse, wrong channel count, wrong size.
    """
    where = msg.describe()
    if msg.model is not None and msg.model != info.weights_hash:
        raise ModelMismatchError(
            f"{where}: names model {msg.model!r}, but this job runs model {info.weights_hash!r} (unknown model version)"
        )
    if msg.kind == "resume":
        return
    kind = info.feature_config.kind
    if kind == "audio" and msg.timestamps is not None:
        raise PayloadError(f"{where}: sensor payload for an audio model; expected 'audio'")
    if kind == "sensor":
        if msg.audio is not None:
            raise PayloadError(f"{where}: audio payload for a sensor model; expected 'sensor'")
        n_channels = len(info.feature_config.sensor.columns)
        if msg.values is not None and msg.values.shape[0] and msg.values.shape[1] != n_channels:
            raise PayloadError(
                f"{where}: sensor values have {msg.values.shape[1]} channel(s); the model expects {n_channels} "
                f"({', '.join(info.feature_config.sensor.columns)})"
            )
    if chunk_size:
        n = msg.size
        if (n != chunk_size and not msg.end) or n > chunk_size:
            unit = "samples" if kind == "audio" else "rows"
            raise PayloadError(
                f"{where}: payload holds {n} {unit}; expected exactly {chunk_size} (the last chunk: at most {chunk_size})"
            )


# ----------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------


def _array(arr: np.ndarray, dtype: str) -> dict[str, Any]:
    a = np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<"))
    out: dict[str, Any] = {"dtype": dtype, "data": base64.b64encode(a.tobytes()).decode("ascii")}
    if a.ndim != 1:
        out["shape"] = list(a.shape)
    return out


def encode_message(msg: ChunkMessage, *, audio_dtype: str = "float32") -> str:
    """One JSON line for ``msg`` (``parse_message(encode_message(m))`` gives ``m`` back; int16 quantises)."""
    obj: dict[str, Any] = {"stream": msg.stream, "seq": msg.seq, "event_time": msg.event_time}
    if msg.kind != "chunk":
        obj["kind"] = msg.kind
    if msg.end:
        obj["end"] = True
    if msg.model is not None:
        obj["model"] = msg.model
    if msg.snapshot is not None:
        obj["snapshot"] = base64.b64encode(msg.snapshot).decode("ascii")
    if msg.audio is not None:
        if audio_dtype == "int16":
            obj["audio"] = _array(np.clip(np.round(msg.audio * 32768.0), -32768, 32767), "int16")
        elif audio_dtype == "list":
            obj["audio"] = [float(v) for v in msg.audio]
        else:
            obj["audio"] = _array(msg.audio, "float32")
    if msg.timestamps is not None:
        obj["sensor"] = {"timestamps": _array(msg.timestamps, "float64"), "values": _array(msg.values, "float64")}
    return json.dumps(obj, separators=(",", ":"))


def chunk(stream: str, seq: int, event_time: float, *, audio: Any = None, timestamps: Any = None,
          values: Any = None, end: bool = False, model: str | None = None) -> ChunkMessage:
    """Build a chunk message (producers, tests, benchmarks)."""
    return ChunkMessage(
        stream, seq, float(event_time), "chunk", end, model,
        audio=None if audio is None else np.asarray(audio, dtype=np.float32),
        timestamps=None if timestamps is None else np.asarray(timestamps, dtype=np.float64),
        values=None if values is None else np.asarray(values, dtype=np.float64).reshape(len(timestamps), -1),
    )


def resume(stream: str, seq: int, event_time: float, snapshot: bytes, model: str | None = None) -> ChunkMessage:
    """Build a resume message from an eviction record's snapshot and next sequence number."""
    return ChunkMessage(stream, seq, float(event_time), "resume", False, model, snapshot=snapshot)

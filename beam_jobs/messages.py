"""Chunk messages of the Beam streaming job: parse, validate, encode.

One message is one JSON object (one line of a ``.jsonl`` file, one Pub/Sub message, one Kafka record
value)::

    {"stream": "mic-7", "seq": 0, "event_time": 1764072000.1, "sample_rate": 8000,
     "audio": {"dtype": "int16", "data": "<base64>"}}
    {"stream": "pump-3", "seq": 4, "event_time": 1764072004.0, "end": true,
     "sensor": {"timestamps": [4.0, 4.5], "values": [[0.1, 20.3], [0.2, 20.1]]}}
    {"kind": "resume", "stream": "mic-7", "seq": 40, "event_time": 1764072100.0, "sample_rate": 8000,
     "snapshot": "<base64>"}

Fields:

* ``stream`` (string, required): the stream id, the key of all per-stream state: 1 to 256 characters, no
  control characters, no ``/`` or ``\\``, not ``.``/``..`` (:func:`rnnstream.pipeline.stream_checks.check_stream_id`).
* ``seq`` (integer >= 0, required): the chunk's position in its stream, from 0 with no holes.
* ``event_time`` (number, required): seconds since the Unix epoch (float) when the chunk was recorded.
* ``kind``: ``"chunk"`` (default) or ``"resume"`` (restore a stream from an eviction snapshot).
* ``end`` (bool, default false): this is the stream's last chunk.
* ``model`` (string, optional): the ``weights_hash`` of the model the sender expects; a mismatch sends
  the message to the dead letters.
* ``sample_rate`` (integer Hz > 0, audio streams only): the rate of the stream's samples. The chunk that
  opens an audio stream (the first one applied: seq 0, or after lost chunks the first that arrives) MUST
  carry it, and so MUST every ``resume`` message (equal to the rate in the snapshot, which the eviction
  record states). Any later chunk MAY carry it; it must then equal the stream's rate. A rate other than the
  model's is resampled (the final prediction equals offline prediction over the resampled signal) unless
  the job runs with ``--no-resample``. Violations are dead letters naming the field and both rates.
* ``audio`` (audio models): mono samples as an *array* (below), at the stream's ``sample_rate``;
  ``float32`` taken as is, ``int16`` scaled by 1/32768 (:mod:`rnnstream.pipeline.codec`, one scale everywhere).
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
from typing import Any

import numpy as np
from rnnstream.pipeline.codec import WIRE_DTYPES, decode_samples, encode_samples, to_float32
from rnnstream.pipeline.errors import (
    MessageError,
    ModelMismatchError,
    PayloadError,
    RnnstreamError,
    StreamIdError,
)
from rnnstream.pipeline.stream_checks import (
    ChunkMessage,
    MessageKind,
    check_head,
    check_message,
    check_sample_rate,
    short_repr,
)

AUDIO_DTYPES = WIRE_DTYPES  # the sample codec's encodings: "audio_dtype" -> wire dtype
SENSOR_DTYPES: dict[str, np.dtype] = {"float64": np.dtype("<f8"), "float32": np.dtype("<f4")}
_KNOWN_FIELDS = {"stream", "seq", "event_time", "kind", "end", "model", "sample_rate", "audio", "sensor", "snapshot"}
#: Longest message accepted (bytes of its line); a stream's chunk is a few KB, a resume snapshot at most 4 MiB.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

#: Checks a message against the model (:func:`rnnstream.pipeline.stream_checks.check_message`).
validate_for_model = check_message


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


def _audio_samples(raw: bytes, name: str, where: str) -> np.ndarray:
    """Audio bytes -> float32 samples through the one codec (int16 scaled by 1/32768); errors as PayloadError."""
    try:
        return decode_samples(raw, name, where=where)  # type: ignore[arg-type]
    except RnnstreamError as exc:
        raise PayloadError(str(exc)) from None


def _list_array(obj: list[Any], where: str, ndim: int) -> np.ndarray:
    """A JSON list of numbers (a list of such lists for ``ndim == 2``) as float64, nothing else: booleans,
    strings, deeper nesting and ragged rows are refused rather than converted."""
    rows = [obj] if ndim == 1 else obj
    for row in rows:
        if not isinstance(row, list):
            raise PayloadError(f"{where}: expected {ndim} dimension(s) of lists, got a {type(row).__name__} inside")
        for v in row:
            if isinstance(v, list):
                raise PayloadError(f"{where}: expected {ndim} dimension(s), got lists nested deeper")
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                what = "a JSON boolean is not a number" if isinstance(v, bool) else f"got {type(v).__name__}"
                raise PayloadError(f"{where}: expected a list of numbers ({what}: {str(v)[:40]})")
    try:
        arr = np.array(obj, dtype=np.float64)
    except (ValueError, OverflowError) as exc:
        raise PayloadError(f"{where}: expected a rectangular list of finite numbers ({str(exc)[:120]})") from None
    return arr.reshape((0,) * ndim) if arr.size == 0 else arr


def decode_array(obj: Any, dtypes: dict[str, np.dtype], where: str, ndim: int) -> np.ndarray:
    """An *array* field (list, or ``{"dtype", "data", "shape"}``) as a float array with ``ndim`` axes."""
    if isinstance(obj, list):
        arr = _list_array(obj, where, ndim)
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
        arr = _audio_samples(raw, name, where) if dtypes is AUDIO_DTYPES else np.frombuffer(raw, dtype=dt)
        shape = obj.get("shape")
        if shape is not None:
            if not (isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                    for s in shape)):
                raise MessageError(f"{where}.shape: expected a list of non-negative integers, got {shape!r}")
            if math.prod(shape) != arr.size:
                raise PayloadError(f"{where}: shape {shape} does not match {arr.size} values")
            arr = arr.reshape(shape)
        arr = arr.astype(np.float32 if name in ("float32", "int16") else np.float64, copy=False)
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
    obj = _load_json(line)
    if not isinstance(obj, dict):
        raise MessageError(f"a message must be a JSON object, got {type(obj).__name__}")
    unknown = set(obj) - _KNOWN_FIELDS
    if unknown:
        names = sorted(str(k)[:40] for k in unknown)[:10]
        raise MessageError(f"unknown fields {names}; expected some of {sorted(_KNOWN_FIELDS)}")
    head = _parse_head(obj)
    where = f"stream {head['stream']!r} seq {head['seq']}"
    rate = check_sample_rate(obj.get("sample_rate"), where)
    if head["kind"] == "resume":
        if "audio" in obj or "sensor" in obj:
            raise MessageError(f"{where}: a resume message carries a snapshot, not a payload")
        snap = _b64(obj.get("snapshot"), f"{where}: snapshot")
        return _with(head, snapshot=snap, sample_rate=rate)
    if "snapshot" in obj:
        raise MessageError(f"{where}: 'snapshot' belongs to kind 'resume' messages only")
    if "audio" in obj and "sensor" in obj:
        raise MessageError(f"{where}: a chunk carries 'audio' or 'sensor', not both")
    if "audio" in obj:
        audio = decode_array(obj["audio"], AUDIO_DTYPES, f"{where}: audio", 1).astype(np.float32, copy=False)
        return _with(head, audio=audio, sample_rate=rate)
    if "sensor" in obj:
        if rate is not None:
            raise MessageError(f"{where}: 'sample_rate' belongs to audio chunks; sensor rows carry their own timestamps")
        ts, vals = _parse_sensor(obj["sensor"], where)
        return _with(head, timestamps=ts, values=vals)
    if not head["end"]:
        raise MessageError(f"{where}: a chunk needs an 'audio' or 'sensor' payload (only an end marker may omit it)")
    return _with(head, sample_rate=rate)


def _load_json(line: str | bytes) -> Any:
    """One message's JSON: bounded in size, UTF-8, and refused (not crashed on) when it is not JSON, nests too
    deeply for the parser, or holds an integer of more digits than Python converts."""
    size = len(line)
    if size > MAX_MESSAGE_BYTES:
        raise MessageError(f"message of {size} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes")
    if isinstance(line, (bytes, bytearray)):
        try:
            line = bytes(line).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MessageError(f"not UTF-8: byte 0x{exc.object[exc.start]:02x} at position {exc.start} "
                               f"({exc.reason}); a message is one UTF-8 JSON object") from None
    try:
        return json.loads(line)
    except RecursionError:
        raise MessageError("not valid JSON: nested too deeply to parse (a message is an object of flat "
                           "fields and arrays of at most 2 dimensions)") from None
    except ValueError as exc:  # JSONDecodeError, and integers beyond Python's digit limit
        raise MessageError(f"not valid JSON: {str(exc)[:200]}") from None


def _parse_head(obj: dict[str, Any]) -> dict[str, Any]:
    """The fields every message has (``stream``, ``seq``, ``event_time``, ``kind``, ``end``, ``model``), checked."""
    stream, seq, et = obj.get("stream"), obj.get("seq"), obj.get("event_time")
    check_head(stream, seq, et)
    kind = obj.get("kind", "chunk")
    if kind not in ("chunk", "resume"):
        raise MessageError(f"stream {stream!r} seq {seq}: 'kind' must be 'chunk' or 'resume', got {short_repr(kind)}")
    end = obj.get("end", False)
    if not isinstance(end, bool):
        raise MessageError(f"stream {stream!r} seq {seq}: 'end' must be true or false, got {short_repr(end)}")
    model = obj.get("model")
    if model is not None and not isinstance(model, str):
        raise MessageError(f"stream {stream!r} seq {seq}: 'model' must be a string, got {short_repr(model)}")
    event_time = float(et)  # type: ignore[arg-type]  # check_head: a finite number
    return {"stream": stream, "seq": seq, "event_time": event_time, "kind": kind, "end": end, "model": model}


def _with(head: dict[str, Any], **fields: Any) -> ChunkMessage:
    """The message: its head and payload fields, made once (a frozen dataclass: ``replace`` would make it twice)."""
    return ChunkMessage(**head, **fields)


def _parse_sensor(sensor: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(sensor, dict) or set(sensor) != {"timestamps", "values"}:
        raise MessageError(f"{where}: 'sensor' must be an object with exactly 'timestamps' and 'values'")
    ts = decode_array(sensor["timestamps"], SENSOR_DTYPES, f"{where}: sensor.timestamps", 1).astype(np.float64)
    vals = decode_array(sensor["values"], SENSOR_DTYPES, f"{where}: sensor.values", 2).astype(np.float64)
    if vals.shape[0] != ts.shape[0]:
        raise PayloadError(f"{where}: {ts.shape[0]} timestamps but {vals.shape[0]} value rows")
    return ts, vals


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
    if msg.sample_rate is not None:
        obj["sample_rate"] = msg.sample_rate
    if msg.audio is not None:
        if audio_dtype == "list":
            obj["audio"] = [float(v) for v in msg.audio]
        elif audio_dtype == "float32":  # as is (NaN too: a producer's bad chunk stays bad, not refused here)
            obj["audio"] = _array(msg.audio, "float32")
        else:  # the one codec: int16 = round(x * 32768) clipped
            data = encode_samples(msg.audio, audio_dtype)  # type: ignore[arg-type]
            obj["audio"] = {"dtype": audio_dtype, "data": base64.b64encode(data).decode("ascii")}
    if msg.timestamps is not None:
        if msg.values is None:
            raise MessageError(f"{msg.describe()}: sensor timestamps without values; expected values [N, C]")
        obj["sensor"] = {"timestamps": _array(msg.timestamps, "float64"), "values": _array(msg.values, "float64")}
    return json.dumps(obj, separators=(",", ":"))


def _audio_in(audio: Any, where: str) -> np.ndarray:
    """Float samples as float32 (kept as they are, NaN included); int16 PCM through the codec (1/32768)."""
    x = np.asarray(audio)
    return x.astype(np.float32) if x.dtype.kind == "f" else to_float32(x, where=where)


def chunk(stream: str, seq: int, event_time: float, *, audio: Any = None, timestamps: Any = None,
          values: Any = None, end: bool = False, model: str | None = None,
          sample_rate: int | None = None) -> ChunkMessage:
    """Build a chunk message (producers, tests, benchmarks). ``audio``: float samples or int16 PCM (codec scale);
    ``sample_rate``: required on the chunk that opens an audio stream."""
    return ChunkMessage(
        stream, seq, float(event_time), "chunk", end, model, sample_rate=sample_rate,
        audio=None if audio is None else _audio_in(audio, f"stream {stream!r} seq {seq}: audio"),
        timestamps=None if timestamps is None else np.asarray(timestamps, dtype=np.float64),
        values=None if values is None else np.asarray(values, dtype=np.float64).reshape(len(timestamps), -1),
    )


def resume(stream: str, seq: int, event_time: float, snapshot: bytes, model: str | None = None, *,
           sample_rate: int | None = None) -> ChunkMessage:
    """Build a resume message from an eviction record's snapshot, next sequence number and ``sample_rate``
    (required for audio streams)."""
    return ChunkMessage(stream, seq, float(event_time), "resume", False, model, snapshot=snapshot,
                        sample_rate=sample_rate)


__all__ = ["AUDIO_DTYPES", "MAX_MESSAGE_BYTES", "SENSOR_DTYPES", "ChunkMessage", "MessageError", "MessageKind",
           "ModelMismatchError", "PayloadError", "StreamIdError", "chunk", "decode_array", "encode_message",
           "parse_message", "resume", "validate_for_model"]

"""The serving wire protocol (``rnnstream.serve/2``): message formats, parsing and validation.

One WebSocket connection carries one or more *streams*, each on a connection-local **channel** (an
unsigned 32-bit integer the client picks in ``start``). Control messages are JSON text frames; chunks
are binary frames; every server message is a JSON text frame, but the predictions of streams started with
``"replies": "binary"``, which come in packed binary frames (:mod:`rnnstream.serving.replies`).

Binary chunk frame (little-endian)::

    offset 0  uint32  channel     (as given in ``start``)
    offset 4  uint32  seq         (0, 1, 2, ... per stream; continues after a resume)
    offset 8  payload

Payload by the stream's ``dtype`` (chosen in ``start``):

* ``"float32"`` (audio, default): float32 samples in [-1, 1], mono, at the stream's ``sample_rate``.
* ``"int16"`` (audio): int16 PCM at the stream's ``sample_rate``, scaled by 1/32768 (``round(x * 32768)``
  on the way out): :mod:`rnnstream.pipeline.codec`, the one scale everywhere.
* ``"float64"`` (sensor models only, required there): rows of ``1 + C`` float64 values,
  ``timestamp_seconds, channel_1 .. channel_C`` in the model's column order, row-major.

Client -> server (JSON)::

    {"type": "start", "channel": 0, "stream": "mic-1", "dtype": "float32",
     "sample_rate": 8000,               # audio: required, Hz of the samples sent (resampled to the model's)
     "outputs": false,                  # also send every frame's output [T][O]
     "replies": "json",                 # or "binary": predictions in packed binary frames (serving.replies)
     "resume": "mic-1",                 # or: continue from snapshot_dir/<id>.snap (see evicted)
     "snapshot": "<base64>", "seq": 12} # or: continue from snapshot bytes (seq: next expected, default 0)
    {"type": "end", "channel": 0, "snapshot": false, "save": false}
    {"type": "ping"}

Server -> client (JSON)::

    {"type": "hello", "protocol": "rnnstream.serve/2", "model": {...}, "limits": {...}}
    {"type": "started", "stream", "channel", "seq", "t", "resumed", "sample_rate"}
    {"type": "prediction", "stream", "channel", "seq", "t", "frames", "predicted", "scores"|"values"[, "outputs"]}
    {"type": "ended", "stream", "channel", "seq", "t", "frames", "predicted", "scores"|"values"[, "snapshot"][, "saved"]}
    {"type": "evicted", "stream", "channel", "seq", "reason", "saved"}   # saved: snapshot id or null
    {"type": "duplicate", "stream", "channel", "seq", "expected"}      # a seq already received: ignored
    {"type": "error", "code", "message"[, "stream", "channel"], "close_code"}   # close_code null: that stream only
    {"type": "pong"} / {"type": "shutdown", "reason"}

In ``prediction`` and ``ended``, ``frames`` counts the frames completed by that chunk (``ended``: by the
whole stream), ``t`` is stream time in seconds, ``predicted`` is the stream's current answer (``null``
before the first frame) with ``scores`` (classify/tag: probability by label name) or ``values``
(forecast/generate). ``ended`` comes after the session's ``end()`` (the resampler's tail flushed), so its
prediction equals offline prediction over the whole signal.

**Sample rates.** The ``start`` of an audio stream must carry ``sample_rate``: the rate (Hz) of the samples
the client will send; another rate than the model's (``hello.model.sample_rate``) is resampled on the
server. A resume (``resume`` or ``snapshot``) carries it too and it must equal the snapshot's. Sensor
streams take none. A missing, invalid or mismatched rate is a ``bad_sample_rate`` error (1008).

A *stream error* (``close_code`` null: ``bad_snapshot``, ``unknown_snapshot``, ``server_error``) ends or refuses
that one stream; the connection and its other streams go on. Every other error is sent as an ``error``
message and then the connection is closed with ``close_code``:
1007 bad payload data, 1008 protocol violation, 1009 frame too big (sent by the WebSocket layer with
a reason, before any message), 1011 server error, 1013 limit reached (try again later), 1001 shutdown.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from rnnstream.pipeline.codec import WIRE_DTYPES, decode_samples, encode_samples
from rnnstream.pipeline.errors import MessageError, RnnstreamError, StreamIdError
from rnnstream.pipeline.stream_checks import check_sample_rate
from rnnstream.pipeline.stream_checks import check_stream_id as core_check_stream_id

try:
    import orjson as _orjson
except ImportError:  # the standard library's json does the same, slower
    _orjson = None  # type: ignore[assignment]

PROTOCOL = "rnnstream.serve/2"
HEADER = struct.Struct("<II")
MAX_U32 = 2**32 - 1

CLOSE_GOING_AWAY = 1001
CLOSE_BAD_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_SERVER_ERROR = 1011
CLOSE_TRY_LATER = 1013

AUDIO_DTYPES = WIRE_DTYPES  # the sample codec's encodings: "audio_dtype" -> wire dtype
SENSOR_DTYPE = "float64"
#: Longest ``resume`` value (a snapshot id; the store refuses any it did not issue).
MAX_SNAPSHOT_ID = 128
#: Default bound on a snapshot given inline in ``start`` (checked on the base64 text, before decoding).
MAX_INLINE_SNAPSHOT = 4 * 1024 * 1024


class ProtocolError(Exception):
    """A client broke the protocol: sent to it as an ``error`` message, then the connection closes."""

    def __init__(self, code: str, message: str, close_code: int = CLOSE_POLICY, *, stream: str | None = None,
                 channel: int | None = None, fatal: bool = True):
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code
        self.stream = stream
        self.channel = channel
        self.fatal = fatal  # False: a stream error; the connection stays open

    def to_message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message,
                               "close_code": self.close_code if self.fatal else None}
        if self.stream is not None:
            msg["stream"] = self.stream
        if self.channel is not None:
            msg["channel"] = self.channel
        return msg


class ServerError(Exception):
    """Client side: the server sent an ``error`` message (or closed the connection)."""

    def __init__(self, code: str, message: str, close_code: int | None = None, stream: str | None = None):
        super().__init__(f"{code}: {message}" + (f" (close code {close_code})" if close_code else ""))
        self.code = code
        self.message = message
        self.close_code = close_code
        self.stream = stream


# ----------------------------------------------------------------------------------------------
# Binary frames
# ----------------------------------------------------------------------------------------------


def encode_chunk(channel: int, seq: int, payload: np.ndarray | bytes) -> bytes:
    """A binary chunk frame: header + payload bytes (a NumPy array is sent in its own dtype, little-endian)."""
    if isinstance(payload, np.ndarray):
        arr = payload if payload.dtype.byteorder in ("<", "|", "=") else payload.astype(payload.dtype.newbyteorder("<"))
        payload = np.ascontiguousarray(arr).tobytes()
    return HEADER.pack(channel, seq) + payload


def audio_payload(samples: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """Samples (float in [-1, 1], or int16 PCM) as the wire dtype, through :mod:`rnnstream.pipeline.codec`:
    float32 as is, int16 as ``round(x * 32768)`` clipped (int16 input stays as it is)."""
    if dtype not in AUDIO_DTYPES:
        raise ValueError(f"audio dtype must be one of {sorted(AUDIO_DTYPES)}, got {dtype!r}")
    return np.frombuffer(encode_samples(samples, dtype), dtype=AUDIO_DTYPES[dtype])  # type: ignore[arg-type]


def sensor_payload(timestamps: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Rows ``[N, 1 + C]`` float64: timestamp then the channels."""
    ts = np.asarray(timestamps, dtype=np.float64).reshape(-1, 1)
    vals = np.asarray(values, dtype=np.float64)
    if vals.ndim == 1:
        vals = vals[:, None]
    return np.ascontiguousarray(np.concatenate([ts, vals], axis=1), dtype="<f8")


def split_frame(frame: bytes) -> tuple[int, int, memoryview]:
    """``(channel, seq, payload)`` of a binary frame; :class:`ProtocolError` when shorter than the header."""
    if len(frame) < HEADER.size:
        raise ProtocolError(
            "bad_frame",
            f"binary frame of {len(frame)} bytes is shorter than the {HEADER.size}-byte header "
            "(uint32 channel, uint32 seq, little-endian)",
            CLOSE_BAD_DATA,
        )
    channel, seq = HEADER.unpack_from(frame)
    return channel, seq, memoryview(frame)[HEADER.size :]


def decode_audio_payload(payload: memoryview | bytes, dtype: str, *, where: str) -> np.ndarray:
    """Audio samples float32 ``[S]`` from a payload (:func:`rnnstream.pipeline.codec.decode_samples`: int16
    scaled by 1/32768); a length that is not whole samples is a ``bad_frame`` error. NaN/Inf are not looked for
    here: the stream core's payload check refuses them on accept (also a ``bad_frame``), as for sensor rows."""
    try:
        return decode_samples(payload, dtype, where=where, check_finite=False)  # type: ignore[arg-type]
    except RnnstreamError as exc:
        raise ProtocolError("bad_frame", str(exc), CLOSE_BAD_DATA) from None


def decode_sensor_payload(payload: memoryview | bytes, n_channels: int, *, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(timestamps [N], values [N, C])`` from float64 rows of ``1 + C`` values."""
    row = 8 * (1 + n_channels)
    if len(payload) % row:
        raise ProtocolError(
            "bad_frame",
            f"{where}: payload of {len(payload)} bytes is not a whole number of sensor rows "
            f"(float64 timestamp + {n_channels} float64 channels = {row} bytes per row)",
            CLOSE_BAD_DATA,
        )
    rows = np.frombuffer(payload, dtype="<f8").reshape(-1, 1 + n_channels).astype(np.float64)
    return rows[:, 0].copy(), rows[:, 1:].copy()


# ----------------------------------------------------------------------------------------------
# Control messages
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    channel: int
    stream: str | None
    dtype: str
    outputs: bool
    resume: str | None
    snapshot: bytes | None
    seq: int | None
    sample_rate: int | None = None  # Hz of the samples the client will send (audio streams: required)
    replies: str = "json"  # "binary": predictions in packed frames (rnnstream.serving.replies)


@dataclass(frozen=True)
class End:
    channel: int
    snapshot: bool
    save: bool


@dataclass(frozen=True)
class Ping:
    pass


def _bad(message: str) -> ProtocolError:
    return ProtocolError("bad_message", message, CLOSE_POLICY)


def _channel(data: dict[str, Any]) -> int:
    ch = data.get("channel", 0)
    if isinstance(ch, bool) or not isinstance(ch, int) or not 0 <= ch <= MAX_U32:
        raise _bad(f"'channel' must be an integer in 0..{MAX_U32}, got {ch!r}")
    return ch


def _flag(data: dict[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise _bad(f"{key!r} must be true or false, got {value!r}")
    return value


def check_stream_id(value: Any) -> str:
    """``value`` if it is a usable stream id by the one rule of the stream core
    (:func:`rnnstream.pipeline.stream_checks.check_stream_id`), else a ``bad_message`` error with the core's reason."""
    try:
        return core_check_stream_id(value)
    except StreamIdError as exc:
        raise _bad(f"start: {exc}") from None


def check_start_rate(rate: Any) -> int | None:
    """A ``start``'s ``sample_rate`` by the core's bounds (:func:`rnnstream.pipeline.stream_checks.check_sample_rate`:
    a positive integer up to ``MAX_SAMPLE_RATE`` Hz, or absent), else a ``bad_sample_rate`` error with its reason."""
    try:
        return check_sample_rate(rate, "start")
    except MessageError as exc:
        raise ProtocolError("bad_sample_rate", str(exc)) from None


def check_snapshot_id(value: Any) -> str:
    """A ``resume`` value: a non-empty string of at most :data:`MAX_SNAPSHOT_ID` characters (whether it names a
    saved stream is the store's to say: an id it never issued is an ``unknown_snapshot`` stream error)."""
    if not isinstance(value, str) or not value or len(value) > MAX_SNAPSHOT_ID:
        raise _bad(f"start: 'resume' must be a snapshot id (a non-empty string of at most {MAX_SNAPSHOT_ID} "
                   f"characters, as sent in 'evicted' or 'ended'), got {value!r:.160}")
    return value


def parse_control(text: str, *, max_snapshot_bytes: int = MAX_INLINE_SNAPSHOT) -> Start | End | Ping:
    """Parse one JSON control message; :class:`ProtocolError` (``bad_message``) explains what is wrong.

    An inline ``snapshot`` longer than ``max_snapshot_bytes`` (once decoded) is refused from the length of
    its base64 text, before anything is decoded (a stream error, ``bad_snapshot``)."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise _bad(f"control message is not valid JSON ({exc}); got {text[:80]!r}") from None
    if not isinstance(data, dict):
        raise _bad(f"control message must be a JSON object with a 'type', got {type(data).__name__}")
    kind = data.get("type")
    if kind == "start":
        return _parse_start(data, max_snapshot_bytes)
    if kind == "end":
        unknown = sorted(set(data) - {"type", "channel", "snapshot", "save"})
        if unknown:
            raise _bad(f"end: unknown field(s) {unknown}; expected some of ['channel', 'save', 'snapshot', 'type']")
        return End(_channel(data), _flag(data, "snapshot"), _flag(data, "save"))
    if kind == "ping":
        return Ping()
    raise _bad(f"unknown control message type {kind!r}; expected 'start', 'end' or 'ping'")


_START_FIELDS = {"type", "channel", "stream", "dtype", "sample_rate", "outputs", "resume", "snapshot", "seq",
                 "replies"}
REPLIES = ("json", "binary")


def _snapshot_blob(snap: Any, max_bytes: int, where: dict[str, Any]) -> bytes | None:
    if snap is None:
        return None
    if not isinstance(snap, str):
        raise _bad(f"start: 'snapshot' must be a base64 string, got {type(snap).__name__}")
    if len(snap) // 4 * 3 > max_bytes:
        raise ProtocolError("bad_snapshot", f"start: 'snapshot' of about {len(snap) // 4 * 3} bytes exceeds the limit "
                            f"of {max_bytes} bytes", fatal=False, **where)
    try:
        return base64.b64decode(snap, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(f"start: 'snapshot' is not valid base64 ({exc})") from None


def _parse_start(data: dict[str, Any], max_snapshot_bytes: int) -> Start:
    unknown = sorted(set(data) - _START_FIELDS)
    if unknown:
        raise _bad(f"start: unknown field(s) {unknown}; expected some of {sorted(_START_FIELDS)}")
    stream = data.get("stream")
    if stream is not None:
        stream = check_stream_id(stream)
    dtype = data.get("dtype", "float32")
    if dtype not in ("float32", "int16", SENSOR_DTYPE):
        raise _bad(f"start: 'dtype' must be 'float32' or 'int16' (audio) or 'float64' (sensor rows), got {dtype!r}")
    rate = check_start_rate(data.get("sample_rate"))
    resume = data.get("resume")
    if resume is not None:
        resume = check_snapshot_id(resume)
    if resume is not None and data.get("snapshot") is not None:
        raise _bad("start: give either 'resume' (a saved snapshot id) or 'snapshot' (bytes), not both")
    blob = _snapshot_blob(data.get("snapshot"), max_snapshot_bytes, {"channel": _channel(data), "stream": stream})
    seq = data.get("seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_U32):
        raise _bad(f"start: 'seq' must be an integer in 0..{MAX_U32}, got {seq!r}")
    replies = data.get("replies", "json")
    if replies not in REPLIES:
        raise _bad(f"start: 'replies' must be 'json' or 'binary', got {replies!r}")
    outputs = _flag(data, "outputs")
    if outputs and replies == "binary":
        raise _bad("start: 'outputs' (every frame's output) comes in JSON replies only; leave out 'outputs' or "
                   "use 'replies': 'json'")
    return Start(_channel(data), stream, dtype, outputs, resume, blob, seq, rate, replies)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (JSON has no NaN/Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps_finite(msg: dict[str, Any]) -> str:
    """:func:`dumps` of a message known to hold finite numbers only (a ``prediction``: the model's outputs are
    checked finite before they are committed), with orjson where it is installed (several times faster)."""
    if _orjson is None:
        return json.dumps(msg, separators=(",", ":"))
    return _orjson.dumps(msg).decode()


def dumps(msg: dict[str, Any]) -> str:
    """Strict JSON (RFC 8259): a NaN or infinity anywhere becomes ``null`` and the message gets
    ``"non_finite": true`` instead of the invalid tokens ``NaN``/``Infinity``."""
    try:
        return json.dumps(msg, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps({**_finite(msg), "non_finite": True}, separators=(",", ":"), allow_nan=False)


def b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode("ascii")

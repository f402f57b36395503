"""The Beam coder of parsed chunk messages: how a :class:`ChunkMessage` crosses from the parsing step to the
stateful ``DoFn`` (a keyed shuffle: the runner decodes and re-encodes every element to group it by stream).

Beam's default for an object it has no coder for is a pickle of the dataclass with its NumPy arrays (6.3 us to
encode and 5.0 us to decode a 100 ms chunk here, four times per element on the FnApiRunner); this coder pickles
one flat tuple of plain values, the arrays as ``(dtype, shape, bytes)`` (protocol 5), led by a layout version.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
from apache_beam.coders import Coder
from rnnstream.pipeline.errors import MessageError
from rnnstream.pipeline.stream_checks import ChunkMessage

#: Layout version of :class:`ChunkMessageCoder`'s bytes.
MESSAGE_CODER_VERSION = 1

_Array = tuple[str, tuple[int, ...], bytes] | None


def _pack(arr: np.ndarray | None) -> _Array:
    return None if arr is None else (arr.dtype.str, arr.shape, arr.tobytes())


def _unpack(packed: _Array) -> np.ndarray | None:
    if packed is None:
        return None
    dtype, shape, raw = packed
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()  # writable, as a decoded pickle's arrays are


class ChunkMessageCoder(Coder):
    """Encodes a :class:`ChunkMessage` exactly (every field; arrays with their dtype and shape)."""

    def encode(self, msg: ChunkMessage) -> bytes:
        body = (MESSAGE_CODER_VERSION, msg.stream, msg.seq, msg.event_time, msg.kind, msg.end, msg.model,
                _pack(msg.audio), _pack(msg.timestamps), _pack(msg.values), msg.snapshot, msg.sample_rate)
        return pickle.dumps(body, protocol=5)

    def decode(self, encoded: bytes) -> ChunkMessage:
        version, stream, seq, event_time, kind, end, model, audio, timestamps, values, snapshot, rate = \
            pickle.loads(encoded)
        if version != MESSAGE_CODER_VERSION:
            raise MessageError(f"chunk message encoded with coder layout {version}; this job reads "
                               f"{MESSAGE_CODER_VERSION}")
        return ChunkMessage(stream, seq, event_time, kind, end, model, _unpack(audio), _unpack(timestamps),
                            _unpack(values), snapshot, rate)

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self) -> Any:
        return ChunkMessage


def register() -> None:
    """Make Beam use :class:`ChunkMessageCoder` for ``ChunkMessage`` (idempotent; at pipeline construction)."""
    from apache_beam.coders import registry

    registry.register_coder(ChunkMessage, ChunkMessageCoder)


__all__ = ["ChunkMessageCoder", "MESSAGE_CODER_VERSION", "register"]

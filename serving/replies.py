"""Binary prediction replies (``"replies": "binary"`` in ``start``): many predictions in one frame.

A stream started with ``"replies": "binary"`` gets its predictions in binary WebSocket frames instead of one
JSON ``prediction`` message per chunk; the server puts every prediction of one batch that goes to one
connection in one frame, so a client multiplexing many streams reads one frame (one NumPy call) per batch.
Every other message (``started``, ``ended``, ``error``, ...) stays JSON.

Frame (little-endian)::

    offset 0  4 bytes  magic b"RSP1"
    offset 4  uint16   output_dim C
    offset 6  uint16   reserved (0)
    offset 8  uint32   N, the number of rows
    offset 12 N rows of PREDICTION_ROW(C), packed:
              uint32 channel, uint32 seq, uint32 frames (completed by this chunk), uint32 frames_total,
              float64 t (stream time, s), int32 predicted (class index; -1 before the first frame, and for
              forecast/generate models), float32 values[C] (classify/tag: the probabilities; otherwise the
              latest frame's output; zeros before the first frame)

The JSON ``prediction`` of the same chunk carries the same numbers (``predicted`` as the label name, ``scores``
keyed by label; :func:`row_to_message` turns a row back into that message given the ``hello``'s labels).
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

MAGIC = b"RSP1"
_HEAD = struct.Struct("<4sHHI")


def prediction_row(output_dim: int) -> np.dtype:
    """The packed row of one prediction for a model with ``output_dim`` outputs (see the module doc)."""
    return np.dtype([("channel", "<u4"), ("seq", "<u4"), ("frames", "<u4"), ("frames_total", "<u4"),
                     ("t", "<f8"), ("predicted", "<i4"), ("values", "<f4", (output_dim,))])


def encode_predictions(rows: np.ndarray) -> bytes:
    """One frame from ``rows`` (an array of :func:`prediction_row`)."""
    dim = rows.dtype["values"].shape[0]
    return _HEAD.pack(MAGIC, dim, 0, rows.shape[0]) + rows.tobytes()


def decode_predictions(frame: bytes | memoryview) -> np.ndarray:
    """The rows of a binary prediction frame; ``ValueError`` when it is not one (bad magic or length)."""
    if len(frame) < _HEAD.size:
        raise ValueError(f"a binary reply of {len(frame)} bytes is shorter than its {_HEAD.size}-byte header")
    magic, dim, _, n = _HEAD.unpack_from(frame)
    if magic != MAGIC:
        raise ValueError(f"a binary reply must start with {MAGIC!r}, got {bytes(magic)!r}")
    dtype = prediction_row(dim)
    if len(frame) != _HEAD.size + n * dtype.itemsize:
        raise ValueError(f"a binary reply of {n} rows of {dtype.itemsize} bytes must be "
                         f"{_HEAD.size + n * dtype.itemsize} bytes long, got {len(frame)}")
    return np.frombuffer(frame, dtype=dtype, count=n, offset=_HEAD.size)


def row_to_message(row: Any, stream: str, labels: list[str], task: str, forecast_dims: int = 1) -> dict[str, Any]:
    """The JSON ``prediction`` message equal to one decoded row (``labels``, ``task`` and, for forecasts, the
    number of target dimensions per step, from ``hello.model``)."""
    values = [float(v) for v in row["values"]]
    labels = [*labels, *(str(k) for k in range(len(labels), len(values)))]  # unnamed classes: their index
    msg: dict[str, Any] = {"type": "prediction", "stream": stream, "channel": int(row["channel"]),
                           "seq": int(row["seq"]), "t": round(float(row["t"]), 6), "frames": int(row["frames"])}
    if int(row["frames_total"]) == 0:
        msg["predicted"] = None
    elif task in ("classify", "tag"):
        msg["predicted"] = labels[int(row["predicted"])]
        msg["scores"] = dict(zip(labels, values))
    else:
        d = max(1, forecast_dims)
        msg["predicted"] = [values[i : i + d] for i in range(0, len(values), d)] if task == "forecast" else values
        msg["values"] = values
    return msg


__all__ = ["MAGIC", "decode_predictions", "encode_predictions", "prediction_row", "row_to_message"]

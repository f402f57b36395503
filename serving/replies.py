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
from collections.abc import Sequence
from typing import Any

import numpy as np

from rnnstream.pipeline.task_kinds import TASK_KINDS
from rnnstream.pipeline.streaming import softmax

MAGIC = b"RSP1"
_HEAD = struct.Struct("<4sHHI")


def prediction_row(output_dim: int) -> np.dtype:
    """The packed row of one prediction for a model with ``output_dim`` outputs (see the module doc)."""
    return np.dtype([("channel", "<u4"), ("seq", "<u4"), ("frames", "<u4"), ("frames_total", "<u4"),
                     ("t", "<f8"), ("predicted", "<i4"), ("values", "<f4", (output_dim,))])


def prediction_rows(channels: Sequence[int], seqs: Sequence[int], results: Sequence[Any], output_dim: int, *,
                    probabilities: bool) -> np.ndarray:
    """The rows of many predictions at once (one array for a whole batch; a connection's frame takes its rows).

    ``results``: the chunks' ``ChunkResult`` (``n_frames``, ``frames_seen``, ``t``, ``last_output [C]`` or None);
    ``probabilities``: softmax the values and fill ``predicted`` (classify/tag models)."""
    rows = np.zeros(len(results), prediction_row(output_dim))
    rows["channel"] = channels
    rows["seq"] = seqs
    rows["frames"] = [r.n_frames for r in results]
    rows["frames_total"] = [r.frames_seen for r in results]
    rows["t"] = [r.t for r in results]
    rows["predicted"] = -1
    have = [k for k, r in enumerate(results) if r.last_output is not None]
    if have:
        last = np.stack([results[k].last_output for k in have]).astype(np.float32, copy=False)
        if probabilities:
            last = softmax(last)  # the probabilities, as interpret() gives them
            rows["predicted"][have] = last.argmax(axis=1)
        rows["values"][have] = last
    return rows


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
    number of target dimensions per step, from ``hello.model``). A task this client does not know (a newer
    server's) reads its values as they are."""
    values = [float(v) for v in row["values"]]
    labels = [*labels, *(str(k) for k in range(len(labels), len(values)))]  # unnamed classes: their index
    msg: dict[str, Any] = {"type": "prediction", "stream": stream, "channel": int(row["channel"]),
                           "seq": int(row["seq"]), "t": round(float(row["t"]), 6), "frames": int(row["frames"])}
    kind = TASK_KINDS.get(task)
    if int(row["frames_total"]) == 0:
        msg["predicted"] = None
    elif kind is not None and kind.outputs_logits:
        msg["predicted"] = labels[int(row["predicted"])]
        msg["scores"] = dict(zip(labels, values))
    else:
        msg["predicted"] = kind.predicted(values, labels, forecast_dims) if kind is not None else values
        msg["values"] = values
    return msg


__all__ = ["MAGIC", "decode_predictions", "encode_predictions", "prediction_row", "prediction_rows", "row_to_message"]

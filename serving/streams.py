"""A stream as the server holds it (its order is the stream core's state), and the checks on its chunks
(size, duration, values)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from rnnstream.pipeline.errors import RnnstreamError
from rnnstream.pipeline.stream_checks import ChunkMessage, check_payload
from rnnstream.pipeline.stream_state import Step, StreamState
from rnnstream.pipeline.streaming import SensorChunk, StreamSession
from rnnstream.serving import protocol as P
from rnnstream.serving.batcher import BatchStream


class Stream(BatchStream):
    """One client stream: its session, where it lives (connection, channel) and its position."""

    def __init__(self, session: StreamSession, conn: Any, channel: int, start: P.Start, seq: int, state: StreamState):
        super().__init__(session)
        #: the stream core's state: ordering, duplicates, end and the commit of every result go through the core
        self.state = state
        state.session, state.rate, state.next, state.fresh = session, session.sample_rate, seq, False
        self.steps: dict[int, Step] = {}  # seq -> the core's step of each chunk queued or in flight
        self.id = session.stream_id
        self.conn = conn
        self.channel = channel
        self.dtype = start.dtype
        self.outputs = start.outputs
        self.binary = start.replies == "binary"  # predictions in packed binary frames (serving.replies)
        self.done_seq = seq  # next seq whose prediction has not been sent
        self.last_activity = time.monotonic()
        self.ending: P.End | None = None
        self.last_t: float | None = None
        self.sizes: dict[int, int] = {}  # seq -> bytes of each chunk queued or in flight
        carry = session.carry
        if session.info.feature_config.kind == "sensor" and carry[0] != 0.0:
            self.last_t = float(carry[1])

    @property
    def next_seq(self) -> int:
        """The next seq expected from the client."""
        return self.state.next

    def where(self) -> dict[str, Any]:
        return {"stream": self.id, "channel": self.channel}


def chunk_bytes(chunk: Any) -> int:
    """Bytes a decoded chunk holds in memory."""
    if isinstance(chunk, SensorChunk):
        return int(chunk.timestamps.nbytes + chunk.values.nbytes)
    return int(np.asarray(chunk).nbytes)


def decode_chunk(stream: Stream, payload: memoryview, sensor_channels: int, max_chunk_s: float, seq: int) -> Any:
    """The chunk as the session takes it: float32 samples, or a validated :class:`SensorChunk`.

    The wire is decoded here (whole samples/rows, finite values, the duration bound); the payload then passes
    the stream core's checks when the core accepts it (:func:`rnnstream.pipeline.stream_checks.check_payload`:
    kind, dtype, shape, finite values, channel count), the same as a Beam stream job's; sensor times must also
    follow the stream's last time (checked here, before the core, as the server refuses them at once)."""
    where = f"stream {stream.id!r} seq {seq}"
    try:
        if sensor_channels:
            from rnnstream.pipeline.sensors import validate_chunk

            ts, vals = P.decode_sensor_payload(payload, sensor_channels, where=where)
            check_payload(ChunkMessage(stream.id, seq, 0.0, timestamps=ts, values=vals), stream.session.info)
            ts, vals = validate_chunk(ts, vals, sensor_channels, stream.last_t, where=where)
            return SensorChunk(ts, vals)
        rate = stream.session.sample_rate or 1
        itemsize = P.AUDIO_DTYPES[stream.dtype].itemsize
        seconds = len(payload) / itemsize / rate
        if seconds > max_chunk_s:
            raise P.ProtocolError("chunk_too_long", f"{where}: {seconds:.1f} s of audio at {rate} Hz in one chunk "
                                  f"exceeds the limit of {max_chunk_s:g} s; send shorter chunks", P.CLOSE_TOO_BIG)
        # whole float32 samples (decode_samples); the stream core checks the rest (finite values) on accept
        return P.decode_audio_payload(payload, stream.dtype, where=where)
    except P.ProtocolError as err:
        err.stream, err.channel = stream.id, stream.channel
        raise
    except RnnstreamError as exc:
        raise P.ProtocolError("bad_frame", str(exc), P.CLOSE_BAD_DATA, **stream.where()) from None


__all__ = ["Stream", "chunk_bytes", "decode_chunk"]

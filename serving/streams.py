"""A stream as the server holds it, and the checks on its chunks (seq order, size, duration, values)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from rnnstream.pipeline.errors import RnnstreamError
from rnnstream.pipeline.stream_checks import ChunkMessage, check_payload
from rnnstream.pipeline.streaming import SensorChunk, StreamSession
from rnnstream.serving import protocol as P
from rnnstream.serving.batcher import BatchStream


class Stream(BatchStream):
    """One client stream: its session, where it lives (connection, channel) and its position."""

    def __init__(self, session: StreamSession, conn: Any, channel: int, start: P.Start, seq: int):
        super().__init__(session)
        self.id = session.stream_id
        self.conn = conn
        self.channel = channel
        self.dtype = start.dtype
        self.outputs = start.outputs
        self.next_seq = seq  # next seq expected from the client
        self.done_seq = seq  # next seq whose prediction has not been sent
        self.last_activity = time.monotonic()
        self.ending: P.End | None = None
        self.last_t: float | None = None
        self.sizes: dict[int, int] = {}  # seq -> bytes of each chunk queued or in flight
        carry = session.carry
        if session.info.feature_config.kind == "sensor" and carry[0] != 0.0:
            self.last_t = float(carry[1])

    def where(self) -> dict[str, Any]:
        return {"stream": self.id, "channel": self.channel}


def chunk_bytes(chunk: Any) -> int:
    """Bytes a decoded chunk holds in memory."""
    if isinstance(chunk, SensorChunk):
        return int(chunk.timestamps.nbytes + chunk.values.nbytes)
    return int(np.asarray(chunk).nbytes)


def check_seq(stream: Stream, seq: int) -> bool:
    """True for the next chunk; False for a duplicate (a seq already received); a gap is a ``bad_seq`` error."""
    where = f"stream {stream.id!r} seq {seq}"
    if stream.ending is not None:
        raise P.ProtocolError("bad_seq", f"{where}: chunk after 'end'", **stream.where())
    if seq < stream.next_seq:
        return False
    if seq != stream.next_seq:
        raise P.ProtocolError("bad_seq", f"{where}: expected seq {stream.next_seq} (chunks are numbered 0, 1, 2, ... in "
                              "order, continuing after a resume; a gap means chunks were lost)", **stream.where())
    return True


def decode_chunk(stream: Stream, payload: memoryview, sensor_channels: int, max_chunk_s: float, seq: int) -> Any:
    """The chunk as the session takes it: float32 samples, or a validated :class:`SensorChunk`.

    The wire is decoded here (whole samples/rows, the duration bound); the payload then passes the stream
    core's checks (:func:`rnnstream.pipeline.stream_checks.check_payload`: kind, dtype, shape, finite values,
    channel count), the same as a Beam stream job's; sensor times must also follow the stream's last time."""
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
        samples = P.decode_audio_payload(payload, stream.dtype, where=where)
        check_payload(ChunkMessage(stream.id, seq, 0.0, audio=samples), stream.session.info)
        return samples
    except P.ProtocolError as err:
        err.stream, err.channel = stream.id, stream.channel
        raise
    except RnnstreamError as exc:
        raise P.ProtocolError("bad_frame", str(exc), P.CLOSE_BAD_DATA, **stream.where()) from None


__all__ = ["Stream", "check_seq", "chunk_bytes", "decode_chunk"]

"""Opening streams: new ones, and resumes from snapshot bytes or a saved snapshot id.

A snapshot is unpacked and validated (``StreamSession.restore`` -> :mod:`rnnstream.pipeline.snapshot`) in a
worker thread, never on the event loop, after its size was checked (inline: from the base64 length, before
decoding; saved: from the file size, before reading). A snapshot that does not fit the model is a
``bad_snapshot`` *stream* error: that start is refused, the connection and every other stream go on.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING, Any

from rnnstream.pipeline.errors import RnnstreamError, StateError
from rnnstream.pipeline.streaming import StreamSession
from rnnstream.serving import protocol as P
from rnnstream.serving.connection import Connection
from rnnstream.serving.snapshots import SnapshotMissing, SnapshotTooLarge
from rnnstream.serving.streams import Stream

if TYPE_CHECKING:
    from rnnstream.serving.server import StreamServer


class StartMixin:
    """``start`` handling (see module doc)."""

    async def _control(self: StreamServer, conn: Connection, text: str) -> None:
        msg = P.parse_control(text, max_snapshot_bytes=self.config.max_snapshot_bytes)
        if isinstance(msg, P.Ping):
            self._send(conn, {"type": "pong"})
        elif isinstance(msg, P.Start):
            await self._start(conn, msg)
        else:
            self._end(conn, msg)

    def _check_start(self: StreamServer, conn: Connection, msg: P.Start, where: dict[str, Any]) -> None:
        cfg = self.config
        if self._closing:
            raise P.ProtocolError("shutting_down", "the server is shutting down; start the stream elsewhere",
                                  P.CLOSE_TRY_LATER, **where)
        if msg.channel in conn.streams or msg.channel in conn.starting:
            held = conn.streams[msg.channel].id if msg.channel in conn.streams else "(starting)"
            raise P.ProtocolError("channel_busy", f"channel {msg.channel} already carries stream {held!r} on this "
                                  "connection; end it or pick another channel", **where)
        if len(self.streams) + self._starting >= cfg.max_streams:
            raise P.ProtocolError("too_many_streams", f"the server holds {len(self.streams)} streams (limit "
                                  f"{cfg.max_streams}); try again later", P.CLOSE_TRY_LATER, **where)
        share = cfg.per_connection_streams
        if len(conn.streams) + len(conn.starting) >= share:
            raise P.ProtocolError("too_many_streams", f"this connection holds {len(conn.streams)} streams (limit "
                                  f"{share} per connection, of {cfg.max_streams} on the server); end some first or "
                                  "open another connection", P.CLOSE_TRY_LATER, **where)
        kind = self.info.feature_config.kind
        if kind == "sensor" and msg.dtype != P.SENSOR_DTYPE:
            raise P.ProtocolError("bad_dtype", f"this is a sensor model: chunks are float64 rows (timestamp + "
                                  f"{self._sensor_channels} channels); start with dtype 'float64', not {msg.dtype!r}",
                                  **where)
        if kind == "audio" and msg.dtype not in P.AUDIO_DTYPES:
            raise P.ProtocolError("bad_dtype", f"this is an audio model: dtype must be 'float32' or 'int16', "
                                  f"not {msg.dtype!r}", **where)

    async def _start(self: StreamServer, conn: Connection, msg: P.Start) -> None:
        where: dict[str, Any] = {"channel": msg.channel, "stream": msg.stream}
        self._check_start(conn, msg, where)
        conn.starting.add(msg.channel)
        self._starting += 1
        try:
            session, seq, resumed = await self._session_for(msg, where)
        finally:
            conn.starting.discard(msg.channel)
            self._starting -= 1
        stream_id = session.stream_id
        if conn.closing or self._closing:
            return
        if stream_id in self.streams:
            raise P.ProtocolError("stream_busy", f"stream {stream_id!r} is already open on this server", **where)
        stream = Stream(session, conn, msg.channel, msg, seq, self.core.load(stream_id))
        conn.streams[msg.channel] = stream
        conn.failed.pop(msg.channel, None)
        self.streams[stream_id] = stream
        self.metrics.streams_open.inc()
        self.metrics.streams_started.inc()
        self._send(conn, {"type": "started", "stream": stream_id, "channel": msg.channel, "seq": seq,
                          "t": session.t, "resumed": resumed, "sample_rate": session.sample_rate})

    async def _session_for(self: StreamServer, msg: P.Start, where: dict[str, Any]) -> tuple[StreamSession, int, bool]:
        """``(session, next seq, resumed)`` for a start message."""
        if msg.resume is not None:
            blob, meta = await self._claim(msg.resume, where)
            stream_id = str(meta.get("stream", ""))
            if msg.stream is not None and msg.stream != stream_id:
                await asyncio.to_thread(self.store.put_back, msg.resume, blob, meta)  # type: ignore[union-attr]
                raise P.ProtocolError("bad_snapshot", f"snapshot id {msg.resume!r} belongs to stream {stream_id!r}, "
                                      f"not {msg.stream!r}", fatal=False, **where)
            try:
                session = await self._restore(blob, stream_id, msg.sample_rate, where)
            except P.ProtocolError:
                await asyncio.to_thread(self.store.put_back, msg.resume, blob, meta)  # type: ignore[union-attr]
                raise
            return session, int(meta.get("seq", 0)) if msg.seq is None else msg.seq, True
        stream_id = msg.stream or secrets.token_urlsafe(12)
        if stream_id in self.streams:
            raise P.ProtocolError("stream_busy", f"stream {stream_id!r} is already open on this server", **where)
        if msg.snapshot is not None:
            return await self._restore(msg.snapshot, stream_id, msg.sample_rate, where), msg.seq or 0, True
        return self._open(stream_id, msg.sample_rate, where), msg.seq or 0, False

    async def _claim(self: StreamServer, token: str, where: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        if self.store is None:
            raise P.ProtocolError("unknown_snapshot", f"cannot resume {token!r}: this server keeps no snapshots (no "
                                  "--snapshot-dir); send the snapshot bytes in 'snapshot' instead", fatal=False, **where)
        try:
            return await asyncio.to_thread(self.store.claim, token)
        except SnapshotMissing as exc:
            raise P.ProtocolError("unknown_snapshot", str(exc), fatal=False, **where) from None
        except SnapshotTooLarge as exc:
            raise P.ProtocolError("bad_snapshot", str(exc), fatal=False, **where) from None
        except OSError as exc:
            raise P.ProtocolError("store_error", f"reading snapshot {token!r} failed ({type(exc).__name__}: {exc}); "
                                  "try again", fatal=False, **where) from None

    def _rate_error(self, problem: str, where: dict[str, Any]) -> P.ProtocolError:
        return P.ProtocolError("bad_sample_rate", f"start: {problem}", P.CLOSE_POLICY, **where)

    def _open(self: StreamServer, stream_id: str, rate: int | None, where: dict[str, Any]) -> StreamSession:
        """A new session at the client's declared rate (audio: required; sensor: none)."""
        audio = self.info.feature_config.audio
        if audio is None and rate is not None:
            raise self._rate_error(f"'sample_rate' ({rate}) was given for a sensor model; sensor rows carry their "
                                   "own timestamps (leave it out)", where)
        if audio is not None and rate is None:
            raise self._rate_error(f"an audio stream must declare 'sample_rate', the rate (Hz) of the samples it "
                                   f"will send; this model runs at {audio.sample_rate} Hz (other rates are "
                                   "resampled)", where)
        try:
            return StreamSession(self.backend, sample_rate=rate, stream_id=stream_id)
        except RnnstreamError as exc:  # e.g. a rate ratio too extreme to resample
            raise self._rate_error(f"'sample_rate' {rate}: {exc}", where) from None

    async def _restore(self: StreamServer, blob: bytes, stream_id: str, rate: int | None,
                       where: dict[str, Any]) -> StreamSession:
        """The snapshot's session, validated in a worker thread; an audio resume must declare the snapshot's rate."""
        if len(blob) > self.config.max_snapshot_bytes:
            raise P.ProtocolError("bad_snapshot", f"snapshot of {len(blob)} bytes exceeds the limit of "
                                  f"{self.config.max_snapshot_bytes} bytes", fatal=False, **where)
        try:
            session = await asyncio.get_running_loop().run_in_executor(
                None, lambda: StreamSession.restore(self.backend, blob, stream_id=stream_id))
        except (StateError, RnnstreamError) as exc:
            raise P.ProtocolError("bad_snapshot", f"cannot resume from this snapshot: {exc}", fatal=False,
                                  **where) from None
        if session.ended:
            raise P.ProtocolError("bad_snapshot", "this snapshot is of a stream that has ended; start a new stream",
                                  fatal=False, **where)
        if session.sample_rate is None and rate is not None:
            raise self._rate_error(f"'sample_rate' ({rate}) was given for a sensor stream's resume; leave it out",
                                   where)
        if session.sample_rate is not None and rate is None:
            raise self._rate_error(f"a resumed audio stream must declare 'sample_rate': the snapshot's stream runs "
                                   f"at {session.sample_rate} Hz (the model at "
                                   f"{self.info.feature_config.audio.sample_rate} Hz)", where)  # type: ignore[union-attr]
        if rate != session.sample_rate:
            raise self._rate_error(f"'sample_rate' {rate} Hz differs from the snapshot's stream rate "
                                   f"{session.sample_rate} Hz; a stream keeps one rate", where)
        return session


__all__ = ["StartMixin"]

"""Client library and ``rnnstream client`` command for the streaming server (:mod:`rnnstream.serving.protocol`).

::

    async with StreamClient("ws://127.0.0.1:8765/") as client:
        stream = await client.start(sample_rate=8000)      # the rate of the samples you send; waits for "started"
        for chunk in chunks:
            await stream.send(chunk)                        # float32 samples, or SensorChunk for sensor models
        ended = await stream.end()                          # waits for every prediction, then "ended"
        stream.predictions                                  # the "prediction" messages, in seq order

    rnnstream client --url ws://127.0.0.1:8765/ --input clip.wav [--streams N] [--realtime] [--chunk-ms 100]

The command streams a file (audio at the file's own sample rate, which it declares in ``start`` -- the
server resamples; or a CSV/Parquet sensor table, read with the model's feature config from the server's
``hello``) as N concurrent streams and prints every prediction and each ``ended`` message as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.errors import ConfigError
from rnnstream.pipeline.streaming import SensorChunk
from rnnstream.serving import protocol as P
from rnnstream.serving import replies as R
from rnnstream.serving.protocol import ServerError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


class Stream:
    """One stream of a :class:`StreamClient`: ``send`` chunks, ``recv`` its messages, ``end`` it."""

    def __init__(self, client: StreamClient, stream_id: str, channel: int, dtype: str, seq: int):
        self.client = client
        self.id = stream_id
        self.channel = channel
        self.dtype = dtype
        self.seq = seq  # next seq to send
        self.started: dict[str, Any] = {}
        self.predictions: list[dict[str, Any]] = []
        self.ended: dict[str, Any] | None = None
        self._queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()

    def encode(self, chunk: Any) -> bytes:
        """The binary frame for ``chunk`` (audio samples, or ``SensorChunk``/``(timestamps, values)``)."""
        if self.dtype == P.SENSOR_DTYPE:
            ts, vals = (chunk.timestamps, chunk.values) if isinstance(chunk, SensorChunk) else chunk
            payload = P.sensor_payload(ts, vals)
        else:
            payload = P.audio_payload(chunk, self.dtype)
        return P.encode_chunk(self.channel, self.seq, payload)

    async def send(self, chunk: Any) -> int:
        """Send one chunk; returns its seq."""
        seq = self.seq
        await self.client.ws.send(self.encode(chunk))
        self.seq += 1
        return seq

    async def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message for this stream (``prediction``, ``ended``, ``evicted``, ``shutdown``).

        Raises :class:`ServerError` for an ``error`` message or a closed connection.
        """
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if isinstance(item, BaseException):
            self._queue.put_nowait(item)  # every later recv fails the same way
            raise item
        if item.get("type") == "prediction":
            self.predictions.append(item)
        elif item.get("type") == "ended":
            self.ended = item
        return item

    async def end(self, *, snapshot: bool = False, save: bool = False, timeout: float | None = 60.0) -> dict[str, Any]:
        """Send ``end``, collect the remaining predictions, return the ``ended`` message."""
        await self.client.ws.send(P.dumps({"type": "end", "channel": self.channel, "snapshot": snapshot, "save": save}))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            msg = await self.recv(left)
            if msg.get("type") == "ended":
                return msg
            if msg.get("type") in ("evicted", "shutdown"):
                raise ServerError(msg["type"], f"stream {self.id!r} was {msg['type']} before it ended: {msg}")

    def _deliver(self, item: dict[str, Any] | BaseException) -> None:
        self._queue.put_nowait(item)


class StreamClient:
    """An async WebSocket client carrying any number of streams on one connection."""

    def __init__(self, url: str, *, open_timeout: float = 10.0, max_size: int | None = 16 << 20):
        self.url = url
        self.open_timeout = open_timeout
        self.max_size = max_size
        self.hello: dict[str, Any] = {}
        self.streams: dict[int, Stream] = {}
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._starting: dict[int, tuple[asyncio.Future[dict[str, Any]], Stream]] = {}
        self._channels = itertools.count()
        self._pongs: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed: ServerError | None = None

    @property
    def ws(self) -> ClientConnection:
        if self._ws is None:
            raise RuntimeError("StreamClient is not connected; use 'async with StreamClient(url)' or await connect()")
        return self._ws

    @property
    def feature_config(self) -> FeatureConfig:
        return FeatureConfig.from_dict(self.hello["model"]["feature_config"])

    async def connect(self) -> StreamClient:
        self._ws = await connect(self.url, open_timeout=self.open_timeout, compression=None, max_size=self.max_size)
        first = json.loads(await asyncio.wait_for(self._ws.recv(), self.open_timeout))
        if first.get("type") == "error":
            raise ServerError(first.get("code", "error"), first.get("message", ""), first.get("close_code"))
        if first.get("type") != "hello" or first.get("protocol") != P.PROTOCOL:
            raise ServerError("protocol", f"expected a {P.PROTOCOL} hello, got {str(first)[:200]}")
        self.hello = first
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aenter__(self) -> StreamClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def start(self, stream: str | None = None, *, sample_rate: int | None = None, channel: int | None = None,
                    dtype: str | None = None, outputs: bool = False, resume: str | None = None,
                    snapshot: bytes | None = None, seq: int | None = None, timeout: float = 10.0,
                    replies: str = "json") -> Stream:
        """Open a stream and wait for ``started``; ``resume``/``snapshot`` continue a saved stream.

        ``sample_rate``: audio models, required (also to resume): the rate (Hz) of the samples you will send;
        the server resamples another rate than the model's. Sensor models: leave it out.
        ``replies="binary"``: the server sends this stream's predictions in packed binary frames (less work on
        both sides with many streams per connection); ``Stream.predictions`` holds the same messages either way.
        """
        if self.closed is not None:
            raise self.closed
        if channel is None:
            channel = next(c for c in self._channels if c not in self.streams and c not in self._starting)
        if dtype is None:
            dtype = P.SENSOR_DTYPE if self.hello.get("model", {}).get("kind") == "sensor" else "float32"
        msg: dict[str, Any] = {"type": "start", "channel": channel, "dtype": dtype, "outputs": outputs}
        if stream is not None:
            msg["stream"] = stream
        if resume is not None:
            msg["resume"] = resume
        if snapshot is not None:
            msg["snapshot"] = P.b64(snapshot)
        if seq is not None:
            msg["seq"] = seq
        if sample_rate is not None:
            msg["sample_rate"] = sample_rate
        if replies != "json":
            msg["replies"] = replies
        handle = Stream(self, stream or resume or "", channel, dtype, seq or 0)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._starting[channel] = (fut, handle)
        try:
            await self.ws.send(P.dumps(msg))
            started = await asyncio.wait_for(fut, timeout)
        finally:
            self._starting.pop(channel, None)
        handle.id, handle.seq, handle.started = started["stream"], started["seq"], started
        return handle

    async def ping(self, timeout: float = 10.0) -> dict[str, Any]:
        await self.ws.send(P.dumps({"type": "ping"}))
        return await asyncio.wait_for(self._pongs.get(), timeout)

    async def _read(self) -> None:
        ws = self.ws
        try:
            async for raw in ws:
                if isinstance(raw, bytes):
                    self._route_rows(raw)
                else:
                    self._route(json.loads(raw))
        except ConnectionClosed:
            pass
        code, reason = ws.close_code, ws.close_reason
        self.closed = ServerError("closed", f"connection closed: {reason or 'no reason given'}", code)
        for fut, _ in self._starting.values():
            if not fut.done():
                fut.set_exception(self.closed)
        for stream in self.streams.values():
            stream._deliver(self.closed)

    def _stream_error(self, channel: int, err: ServerError) -> None:
        entry = self._starting.get(channel)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(err)
            return
        stream = self.streams.pop(channel, None)
        if stream is not None:
            stream._deliver(err)

    def _route_rows(self, frame: bytes) -> None:
        """A binary prediction frame: each row to its stream, as the JSON ``prediction`` message it stands for."""
        model = self.hello.get("model", {})
        labels, task, dims = list(model.get("labels", [])), model.get("task", ""), model.get("forecast_dims", 1)
        for row in R.decode_predictions(frame):
            stream = self.streams.get(int(row["channel"]))
            if stream is not None:
                stream._deliver(R.row_to_message(row, stream.id, labels, task, dims))

    def _route(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        channel: Any = msg.get("channel")  # the server's channel number (an int), None on connection messages
        if kind == "started":
            entry = self._starting.get(channel)
            if entry is not None and not entry[0].done():
                entry[0].set_result(msg)
                self.streams[channel] = entry[1]
            return
        if kind == "pong":
            self._pongs.put_nowait(msg)
            return
        if kind == "error":
            err = ServerError(msg.get("code", "error"), msg.get("message", ""), msg.get("close_code"), msg.get("stream"))
            if msg.get("close_code") is None and channel is not None:  # a stream error: that stream only
                self._stream_error(channel, err)
                return
            if channel in self._starting and not self._starting[channel][0].done():
                self._starting[channel][0].set_exception(err)
            for fut, _ in self._starting.values():
                if not fut.done():
                    fut.set_exception(err)
            for stream in self.streams.values():
                stream._deliver(err)
            self.closed = err
            return
        if kind == "shutdown":
            for stream in self.streams.values():
                stream._deliver(msg)
            return
        target = self.streams.get(channel)
        if target is not None:
            target._deliver(msg)
            if kind in ("ended", "evicted"):
                del self.streams[channel]


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


def split_signal(signal: Any, fc: FeatureConfig, chunk_ms: float, *,
                 sample_rate: int | None = None) -> list[tuple[Any, float]]:
    """``[(chunk, duration_s)]``: audio in ``chunk_ms`` pieces (``sample_rate``: the signal's rate; default the
    model's); sensor rows by ``chunk_ms`` windows of time."""
    step = chunk_ms / 1000.0
    if fc.kind == "audio":
        rate = sample_rate or fc.audio.sample_rate  # type: ignore[union-attr]
        n = max(1, int(round(rate * step)))
        return [(signal[i : i + n], len(signal[i : i + n]) / rate) for i in range(0, len(signal), n)] or [(signal, 0.0)]
    ts, vals = signal
    if ts.size == 0:
        return []
    bins = np.floor((ts - ts[0]) / step).astype(np.int64)
    cuts = np.flatnonzero(np.diff(bins)) + 1
    out = []
    for a, b in zip([0, *cuts], [*cuts, ts.size]):
        out.append((SensorChunk(ts[a:b], vals[a:b]), step))
    return out


def read_input(path: str, fc: FeatureConfig) -> tuple[Any, int | None]:
    """``(signal, sample_rate)``: audio samples at the file's own rate (the server resamples), or a sensor
    table's ``(timestamps, values)`` and None."""
    if fc.kind == "audio":
        from rnnstream.pipeline.audio_io import read_native

        return read_native(path, channel=fc.audio.channel)  # type: ignore[union-attr]
    from rnnstream.pipeline.sensors import read_sensor_table

    return read_sensor_table(path, fc), None


async def _one_stream(client: StreamClient, name: str, chunks: Sequence[tuple[Any, float]],
                      args: argparse.Namespace, sample_rate: int | None) -> dict[str, Any]:
    stream = await client.start(name, sample_rate=sample_rate, dtype=args.dtype, outputs=args.outputs)
    window = asyncio.Semaphore(max(1, int(client.hello["limits"]["max_queue"]) - 1))

    async def receive() -> dict[str, Any]:
        try:
            while True:
                msg = await stream.recv()
                if msg["type"] == "prediction":
                    window.release()
                if msg["type"] in ("prediction", "ended"):
                    print(P.dumps(msg), flush=True)
                if msg["type"] in ("ended", "evicted", "shutdown"):
                    return msg
        finally:
            for _ in range(len(chunks) + 1):  # never leave the sender waiting on a finished reader
                window.release()

    reader = asyncio.create_task(receive())
    start = time.monotonic()
    elapsed = 0.0
    try:
        for chunk, duration in chunks:
            if args.realtime:
                elapsed += duration
                delay = start + elapsed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await window.acquire()
            await stream.send(chunk)
            if reader.done():
                break
        if not reader.done():
            await client.ws.send(P.dumps({"type": "end", "channel": stream.channel}))
        return await reader
    finally:
        reader.cancel()


async def run_client(args: argparse.Namespace) -> int:
    clients = [StreamClient(args.url) for _ in range(max(1, min(args.connections, args.streams)))]
    try:
        for c in clients:
            await c.connect()
        fc = clients[0].feature_config
        signal, rate = read_input(args.input, fc)
        chunks = split_signal(signal, fc, args.chunk_ms, sample_rate=rate)
        stem = os.path.splitext(os.path.basename(args.input))[0][:64] or "input"
        stem = "".join(ch if ch.isalnum() or ch in "_.-" else "_" for ch in stem)
        tag = uuid.uuid4().hex[:6]
        names = [f"{stem}-{tag}-{i}" for i in range(args.streams)]
        results = await asyncio.gather(
            *(_one_stream(clients[i % len(clients)], name, chunks, args, rate) for i, name in enumerate(names)),
            return_exceptions=True,
        )
    finally:
        for c in clients:
            await c.close()
    failed = [r for r in results if isinstance(r, BaseException) or r.get("type") != "ended"]
    for r in failed:
        print(f"rnnstream client: {r}", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    """The ``rnnstream client`` parser (declared in the light :mod:`rnnstream.serving.cli`)."""
    from rnnstream.serving.cli import build_client_parser

    return build_client_parser()


def run_from_args(args: argparse.Namespace) -> int:
    """Stream ``args.input`` to the server; 1 when a stream did not end normally (errors propagate)."""
    if args.streams < 1 or args.chunk_ms <= 0:
        raise ConfigError(f"--streams must be >= 1 and --chunk-ms > 0, got {args.streams} and {args.chunk_ms}")
    return asyncio.run(run_client(args))


def main(argv: list[str] | None = None) -> int:
    """``rnnstream client``: parsing, logging and exit status are :data:`rnnstream.serving.cli.CLIENT`'s."""
    from rnnstream.serving.cli import CLIENT

    return CLIENT.main(argv)


__all__ = ["ServerError", "Stream", "StreamClient", "main", "split_signal"]

"""One WebSocket connection: its streams, its bounded outbound queue and the task that sends it.

Replies wait in a queue bounded in messages (``max_outbound``) and in bytes (``max_outbound_bytes``); the
sender hands them to aiohttp, whose writer waits for the socket to drain. A client that does not read fills
the queue: it gets a ``slow_consumer`` error and a close (1008); the replies still waiting are dropped (the
error says so). A client that does not take its close frame either is cut off after ``close_timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from aiohttp import web
from rnnstream.serving import protocol as P
from rnnstream.serving.config import ServerConfig

log = logging.getLogger("rnnstream.serve")


def close_reason(text: str) -> str:
    """A close reason fits in 123 UTF-8 bytes."""
    return text.encode("utf-8")[:120].decode("utf-8", errors="ignore")


class _Close:
    def __init__(self, code: int, reason: str):
        self.code = code
        self.reason = reason


class Connection:
    """A client connection (see module doc). ``streams``: channel -> stream, filled by the handler."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, config: ServerConfig):
        self.ws = ws
        self.request = request
        self.config = config
        self.streams: dict[int, Any] = {}
        self.starting: set[int] = set()  # channels whose start awaits a snapshot
        self.failed: dict[int, str] = {}  # channel -> why its stream was closed by the server (evicted, an error)
        self.queued_bytes = 0  # audio bytes of this connection's chunks queued or in flight
        self.closing = False
        self.close_code: int | None = None
        self._out: deque[str | bytes | _Close] = deque()
        self._out_bytes = 0
        self._wake = asyncio.Event()
        self._cutoff: asyncio.TimerHandle | None = None

    @property
    def out_bytes(self) -> int:
        return self._out_bytes

    def send(self, text: str | bytes) -> P.ProtocolError | None:
        """Queue one reply (``str``: a JSON text frame; ``bytes``: a binary frame); returns the ``slow_consumer``
        error when the queue is full (nothing queued then)."""
        if self.closing:
            return None
        cfg = self.config
        size = len(text)
        if len(self._out) >= cfg.max_outbound or self._out_bytes + size > cfg.max_outbound_bytes:
            return P.ProtocolError(
                "slow_consumer",
                f"{len(self._out)} messages ({self._out_bytes} bytes) are waiting to be sent to this client (limits "
                f"{cfg.max_outbound} messages, {cfg.max_outbound_bytes} bytes); read the replies as they come. "
                "The replies still waiting are dropped", P.CLOSE_POLICY)
        self._push(text)
        return None

    def _push(self, item: str | bytes | _Close) -> None:
        self._out.append(item)
        if not isinstance(item, _Close):
            self._out_bytes += len(item)
        self._wake.set()

    def close(self, code: int, reason: str, final: str | None = None, *, drop_pending: bool = False) -> None:
        """Queue ``final`` (an error or shutdown message) and the close frame; later sends are ignored."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        if drop_pending:
            self._out.clear()
            self._out_bytes = 0
        if final is not None:
            self._push(final)
        self._push(_Close(code, close_reason(reason)))
        self._cutoff = asyncio.get_running_loop().call_later(self.config.close_timeout_s, self._cut_off)

    def _cut_off(self) -> None:
        """The client took neither its replies nor the close frame in time: drop the TCP connection."""
        if not self.ws.closed:
            log.info("cutting off a client that did not read its close frame within %.1f s",
                     self.config.close_timeout_s)
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    async def run_sender(self) -> None:
        """Send queued replies in order until the close frame (or the connection breaks)."""
        ws = self.ws
        try:
            while True:
                while not self._out:
                    self._wake.clear()
                    await self._wake.wait()
                item = self._out.popleft()
                if isinstance(item, _Close):
                    await ws.close(code=item.code, message=item.reason.encode())
                    return
                self._out_bytes -= len(item)
                if isinstance(item, bytes):
                    await ws.send_bytes(item)
                else:
                    await ws.send_str(item)
        except (TimeoutError, ConnectionError, RuntimeError) as exc:  # the peer went away mid-send
            log.debug("sending to a client stopped: %s: %s", type(exc).__name__, exc)
        finally:
            if self._cutoff is not None:
                self._cutoff.cancel()


__all__ = ["Connection", "close_reason"]

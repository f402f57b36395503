"""Settings of one :class:`~rnnstream.serving.server.StreamServer` and the bounds they put on it.

Memory is bounded by: ``max_connections x (max_queue_bytes + max_outbound_bytes + max_frame_bytes)`` of
buffers, plus ``max_streams`` sessions (a few KB each for the test models), plus one request body of
``max_body_bytes`` (and its decoded signal, at most ``max_predict_s`` seconds) per concurrent ``POST /predict``.
"""

from __future__ import annotations

from dataclasses import dataclass

from rnnstream.pipeline.errors import ConfigError
from rnnstream.pipeline.snapshot import MAX_SNAPSHOT_BYTES

HEADER_BYTES = 8  # uint32 channel + uint32 seq


@dataclass(frozen=True)
class ServerConfig:
    """Settings of a :class:`StreamServer` (port 0 picks a free port).

    One port serves the WebSocket protocol (``/``) and HTTP (``/health``, ``/livez``, ``/readyz``,
    ``/metrics``, ``POST /predict``). ``http_port``, when not ``None``, adds a second listener serving the same
    application (kept for deployments that split the ports).
    """

    host: str = "127.0.0.1"
    port: int = 8765
    http_port: int | None = None
    max_connections: int = 1024
    max_streams: int = 1024
    max_streams_per_connection: int | None = None  # None: min(max_streams, max(16, max_streams // 4))
    max_frame_bytes: int = 1 << 20
    max_queue: int = 32  # chunks queued per stream
    max_queue_bytes: int = 8 << 20  # audio bytes queued per connection (all its streams)
    max_outbound: int = 4096  # reply messages waiting per connection
    max_outbound_bytes: int = 16 << 20  # reply bytes waiting per connection
    max_chunk_s: float = 30.0  # seconds of audio in one chunk (at the stream's rate)
    max_predict_s: float = 600.0  # seconds of signal in one POST /predict
    max_batch: int = 64
    max_wait_ms: float = 10.0
    batch_threads: int = 1  # threads stepping batches (one backend session shared; >1 overlaps batches; 0: none)
    inline_batch_samples: int = 1 << 18  # a batch of at most this many samples (sensor values) steps on the loop
    worker: int | None = None  # this process' index among the workers (in hello, /health and logs)
    idle_timeout_s: float = 60.0
    snapshot_dir: str | None = None  # a directory, or a URL Beam's FileSystems handles (gs://, s3://...)
    snapshot_ttl_s: float = 24 * 3600.0
    max_snapshot_bytes: int = MAX_SNAPSHOT_BYTES
    snapshot_retries: int = 3
    shutdown_timeout_s: float = 10.0
    close_timeout_s: float = 2.0  # a client that does not take its close frame is cut off after this
    max_body_bytes: int = 64 << 20
    http_timeout_s: float = 30.0
    ping_interval_s: float | None = 20.0

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_streams", "max_frame_bytes", "max_queue", "max_queue_bytes",
                     "max_outbound", "max_outbound_bytes", "max_batch", "max_body_bytes",
                     "max_snapshot_bytes", "snapshot_retries"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"ServerConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("batch_threads", "inline_batch_samples"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"ServerConfig.{name} must be >= 0, got {getattr(self, name)}")
        share = self.max_streams_per_connection
        if share is not None and not 1 <= share <= self.max_streams:
            raise ConfigError(f"ServerConfig.max_streams_per_connection must be in 1..max_streams ({self.max_streams}), "
                              f"got {share}")
        if self.max_frame_bytes <= HEADER_BYTES:
            raise ConfigError(f"ServerConfig.max_frame_bytes must exceed the {HEADER_BYTES}-byte header")
        if self.max_wait_ms < 0 or self.idle_timeout_s < 0 or self.shutdown_timeout_s <= 0:
            raise ConfigError(
                f"ServerConfig: max_wait_ms ({self.max_wait_ms}) and idle_timeout_s ({self.idle_timeout_s}) must be "
                f">= 0, shutdown_timeout_s ({self.shutdown_timeout_s}) > 0"
            )
        for name in ("max_chunk_s", "max_predict_s", "snapshot_ttl_s", "close_timeout_s", "http_timeout_s"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"ServerConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("port", "http_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ConfigError(f"ServerConfig.{name} must be in 0..65535, got {value}")

    @property
    def per_connection_streams(self) -> int:
        """The streams one connection may hold: its share of ``max_streams``."""
        if self.max_streams_per_connection is not None:
            return self.max_streams_per_connection
        return min(self.max_streams, max(16, self.max_streams // 4))


__all__ = ["HEADER_BYTES", "ServerConfig"]

"""``rnnstream serve`` and ``rnnstream client``: the light command-line side.

The parsers live here so that ``--help`` and usage errors are answered before websockets, NumPy, torch or
onnxruntime are imported; the work is :func:`rnnstream.serving.server.run_from_args` and
:func:`rnnstream.serving.client.run_from_args`.
"""

from __future__ import annotations

import argparse
from typing import Any

from rnnstream._cli_support import Command, new_parser

#: The defaults of the :class:`rnnstream.serving.server.ServerConfig` fields that have a flag, repeated here so
#: that ``--help`` shows them without importing the server (the tests check they are ServerConfig's).
SERVE_DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 8765,
    "http_port": None,
    "max_connections": 1024,
    "max_streams": 1024,
    "max_batch": 64,
    "max_wait_ms": 10.0,
    "max_queue": 32,
    "max_queue_bytes": 8 << 20,
    "max_outbound_bytes": 16 << 20,
    "max_frame_bytes": 1 << 20,
    "max_chunk_s": 30.0,
    "max_predict_s": 600.0,
    "batch_threads": 1,
    "inline_batch_samples": 1 << 18,
    "idle_timeout_s": 60.0,
    "snapshot_ttl_s": 24 * 3600.0,
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def build_serve_parser() -> argparse.ArgumentParser:
    d = SERVE_DEFAULTS
    p = new_parser("rnnstream serve", "The online streaming server: WebSocket streams with server-side state, "
                   "cross-stream batching, HTTP /health, /metrics and POST /predict.")
    p.add_argument("--model", required=True, help="an exported .onnx graph or a .pt checkpoint")
    p.add_argument("--host", default=d["host"], help="address to bind (loopback only by default)")
    p.add_argument("--port", type=int, default=d["port"],
                   help="WebSocket + HTTP port (0: any)")
    p.add_argument("--http-port", type=int, default=d["http_port"],
                   help="also serve everything on this second port (0: any free port; default or -1: none)")
    p.add_argument("--max-connections", type=int, default=d["max_connections"], help="concurrent connections")
    p.add_argument("--max-streams", type=int, default=d["max_streams"], help="concurrent streams held")
    p.add_argument("--max-streams-per-connection", type=int, default=None,
                   help="one connection's share of the streams (default: max(16, max-streams/4), at most max-streams)")
    p.add_argument("--max-batch", type=int, default=d["max_batch"], help="streams per backend call")
    p.add_argument("--max-wait-ms", type=float, default=d["max_wait_ms"], help="longest wait to fill a batch")
    p.add_argument("--max-queue", type=int, default=d["max_queue"], help="chunks queued per stream")
    p.add_argument("--max-queue-bytes", type=int, default=d["max_queue_bytes"],
                   help="bytes of chunks queued per connection")
    p.add_argument("--max-outbound-bytes", type=int, default=d["max_outbound_bytes"],
                   help="bytes of replies waiting per connection (a client that does not read is closed, 1008)")
    p.add_argument("--max-frame-bytes", type=int, default=d["max_frame_bytes"], help="largest WebSocket message")
    p.add_argument("--max-chunk-seconds", type=float, default=d["max_chunk_s"], help="longest audio chunk (s)")
    p.add_argument("--max-predict-seconds", type=float, default=d["max_predict_s"],
                   help="longest signal in one POST /predict (s)")
    p.add_argument("--workers", type=int, default=None,
                   help="server processes behind the port (each connection goes to the least-loaded one), each with "
                        "its own event loop, batcher and "
                        "backend session (default: the number of cores this process may run on; 1: no supervisor)")
    p.add_argument("--batch-threads", type=int, default=d["batch_threads"],
                   help="threads stepping batches in each process (0: every batch on the event loop)")
    p.add_argument("--inline-batch-samples", type=int, default=d["inline_batch_samples"],
                   help="a batch holding at most this many audio samples (sensor values) is stepped on the event "
                        "loop's thread, cheaper than a hand-off for small real-time chunks (0: none)")
    p.add_argument("--idle-timeout", type=float, default=d["idle_timeout_s"],
                   help="evict streams idle this long (s; 0: never)")
    p.add_argument("--snapshot-dir", default=None,
                   help="save evicted/abandoned streams here, resume from here (a directory, or a URL such as gs://... "
                   "when apache_beam is installed)")
    p.add_argument("--snapshot-ttl", type=float, default=d["snapshot_ttl_s"], help="saved snapshots expire after (s)")
    p.add_argument("--provider", default="auto", help="onnxruntime execution provider (auto, cpu, cuda)")
    p.add_argument("--threads", type=int, default=None,
                   help="backend intra-op threads (default: one onnxruntime thread, 2-4x cheaper per small batch on "
                        "few cores; a checkpoint keeps PyTorch's setting)")
    p.add_argument("--raw-audio", action="store_true",
                   help="checkpoints: featurize inside the backend (batched) instead of per stream in NumPy")
    p.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default=None,
                   help="level of rnnstream's own log lines (default: INFO, or as --quiet/--verbose set it)")
    return p


def _run_serve(args: argparse.Namespace, argv: list[str]) -> int:
    from rnnstream.serving.server import run_from_args

    return run_from_args(args)


SERVE = Command("serve", build_serve_parser, _run_serve)


def build_client_parser() -> argparse.ArgumentParser:
    p = new_parser("rnnstream client", "Stream a file to a rnnstream server and print its predictions as JSON lines.")
    p.add_argument("--url", default="ws://127.0.0.1:8765/", help="server WebSocket URL")
    p.add_argument("--input", required=True, help="audio file, or CSV/Parquet sensor table for sensor models")
    p.add_argument("--streams", type=int, default=1, help="stream N copies of the file at once")
    p.add_argument("--connections", type=int, default=1, help="spread the streams over this many connections")
    p.add_argument("--realtime", action="store_true", help="send each chunk when its stream time has passed")
    p.add_argument("--chunk-ms", type=float, default=100.0, help="chunk length in milliseconds of stream time")
    p.add_argument("--dtype", default=None, choices=["float32", "int16", "float64"],
                   help="wire dtype (audio: float32 or int16; sensor models: float64)")
    p.add_argument("--outputs", action="store_true", help="ask for every frame's output too")
    return p


def _run_client(args: argparse.Namespace, argv: list[str]) -> int:
    from rnnstream.serving.client import run_from_args

    return run_from_args(args)


CLIENT = Command("client", build_client_parser, _run_client)

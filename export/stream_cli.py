"""``rnnstream stream``: stream a file through the runtime, one JSON object per line per chunk.

::

    rnnstream stream --model MODEL.onnx|CKPT.pt --input FILE --chunk-ms 100 [--provider auto|cpu|cuda]
                     [--threads N] [--raw-audio] [--final-only]

An audio file (``rnnstream.pipeline.audio_io.load_audio``, resampled to the model's rate) is cut into chunks of
``round(chunk_ms * rate / 1000)`` samples; a sensor table (``rnnstream.pipeline.sensors.read_sensor_table``) into
chunks of consecutive rows whose timestamps fall in the same ``chunk_ms`` window, counted from the first
row. ``--chunk-ms 0`` pushes the whole file as one chunk. Each chunk goes through one
:class:`rnnstream.pipeline.streaming.StreamSession` over ``rnnstream.api.load_backend(MODEL)`` and prints
``ChunkResult.to_dict()`` (``t``, ``frames``, ``label``, ``scores``, and ``segment_starts`` after sensor
gaps). The last line is the final prediction: ``{"final": true, "t", "label", "scores", "frames"}``
(``label`` null and ``scores`` empty when the file gave no frame). Any chunking prints the same final
prediction (up to float rounding in the scores), because streaming equals offline.

Exit status: 0; 2 with ``rnnstream stream: error: <message>`` on stderr for bad input (unreadable or missing
file, bad model, bad option); 1 for other failures (see :mod:`rnnstream._cli_support`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import numpy as np

from rnnstream.pipeline.errors import ConfigError
from rnnstream.pipeline.model_info import Backend
from rnnstream.pipeline.streaming import SensorChunk, StreamSession


def audio_chunks(samples: np.ndarray, rate: int, chunk_ms: float) -> Iterator[np.ndarray]:
    """``samples [N]`` in chunks of ``round(chunk_ms * rate / 1000)`` (the last one shorter); whole if ``chunk_ms <= 0``."""
    if chunk_ms <= 0:
        yield samples
        return
    size = int(round(chunk_ms * rate / 1000.0))
    if size < 1:
        raise ConfigError(f"--chunk-ms {chunk_ms} is less than one sample at {rate} Hz")
    for start in range(0, samples.shape[0], size):
        yield samples[start : start + size]


def sensor_chunks(timestamps: np.ndarray, values: np.ndarray, chunk_ms: float) -> Iterator[SensorChunk]:
    """Rows grouped by ``floor((t - t0) / chunk_ms)``: ``SensorChunk(timestamps [n], values [n, C])`` each."""
    if chunk_ms <= 0 or timestamps.shape[0] == 0:
        yield SensorChunk(timestamps, values)
        return
    window = np.floor((timestamps - timestamps[0]) / (chunk_ms / 1000.0)).astype(np.int64)
    cuts = np.flatnonzero(np.diff(window)) + 1
    for ts, vals in zip(np.split(timestamps, cuts), np.split(values, cuts)):
        yield SensorChunk(ts, vals)


def stream_file(backend: Backend, path: str, chunk_ms: float, out: TextIO = sys.stdout, *,
                final_only: bool = False, stream_id: str = "") -> dict[str, Any]:
    """Stream ``path`` through a session over ``backend``, printing JSON lines to ``out``; returns the final line.

    Audio is streamed at the file's own rate (the session resamples it to the model's, as offline prediction
    on the file does); the stream is ended after the last chunk, so the final line equals offline prediction.
    """
    cfg = backend.info.feature_config
    chunks: Iterator[Any]
    if cfg.kind == "audio":
        from rnnstream.pipeline.audio_io import read_native

        samples, rate = read_native(path, channel=cfg.audio.channel)  # type: ignore[union-attr]
        session = StreamSession(backend, sample_rate=rate, stream_id=stream_id or path,
                                resample=cfg.audio.resample)  # type: ignore[union-attr]
        chunks = audio_chunks(samples, rate, chunk_ms)
    else:
        from rnnstream.pipeline.sensors import read_sensor_table

        session = StreamSession(backend, stream_id=stream_id or path)
        ts, vals = read_sensor_table(path, cfg)
        chunks = sensor_chunks(ts, vals, chunk_ms)
    for chunk in chunks:
        res = session.push(chunk)
        if not final_only:
            out.write(json.dumps(res.to_dict()) + "\n")
    session.end()
    pred = session.final()
    final: dict[str, Any] = {"final": True, "t": round(session.t, 6)}
    final.update(pred.to_dict() if pred is not None else {"predicted": None, "frames": 0})
    out.write(json.dumps(final) + "\n")
    out.flush()
    return final


def build_parser() -> argparse.ArgumentParser:
    """The ``rnnstream stream`` parser (declared in the light :mod:`rnnstream.export.cli`)."""
    from rnnstream.export.cli import build_stream_parser

    return build_stream_parser()


def run_from_args(args: argparse.Namespace) -> int:
    """Stream ``args.input`` as the parsed command line asks (errors propagate to the CLI's handler)."""
    from rnnstream.api import load_backend

    backend = load_backend(args.model, provider=args.provider, threads=args.threads, raw_audio=args.raw_audio)
    stream_file(backend, args.input, args.chunk_ms, sys.stdout, final_only=args.final_only)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``rnnstream stream``: parsing, logging and exit status are :data:`rnnstream.export.cli.STREAM`'s."""
    from rnnstream.export.cli import STREAM

    return STREAM.main(argv)


if __name__ == "__main__":
    sys.exit(main())

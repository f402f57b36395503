"""The one sample codec: how audio samples are represented in memory and on the wire.

Inside rnnstream audio is float32 in ``[-1, 1]``. Callers may also hand over 16-bit PCM (``int16``), which is
scaled by ``1 / 32768`` (:data:`PCM16_SCALE`) — the convention of WAV readers (soundfile, torchaudio) — so
``-32768`` maps to ``-1.0`` and ``32767`` to ``0.99997``. Every entry point (the Python session, the stream job's
messages, the WebSocket frames) converts through :func:`to_float32`, :func:`decode_samples` and
:func:`encode_samples`, so there is one scale everywhere.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from rnnstream.pipeline.errors import NonFiniteSamplesError, ShapeError

#: int16 PCM full scale: ``float = int16 / PCM16_SCALE``.
PCM16_SCALE = 32768.0

#: Wire encodings of samples: little-endian float32 or int16.
SampleEncoding = Literal["float32", "int16"]
#: The wire dtype of each encoding (the stream job's messages, the WebSocket frames, ``POST /predict`` bodies).
WIRE_DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "int16": np.dtype("<i2")}
#: The same in this machine's byte order (the singletons).
_NATIVE: dict[str, np.dtype[Any]] = {"float32": np.dtype(np.float32), "int16": np.dtype(np.int16)}
_F32 = np.dtype(np.float32)


def to_float32(samples: Any, *, where: str = "chunk", check_finite: bool = True) -> np.ndarray:
    """Mono samples ``[S]`` as float32 in ``[-1, 1]``: floats as they are, int16 scaled by ``1 / 32768``.

    ``check_finite=False`` leaves NaN/Inf to the caller's own check (an adapter whose stream core checks every
    payload on accept: the samples are not looked at twice).

    Raises:
        ShapeError: not one-dimensional, or a dtype other than floating point or int16 (int32, bool, complex,
            strings): such samples have no single scale, so they are refused rather than guessed.
        NonFiniteSamplesError: NaN or Inf among float samples (the message counts them).
    """
    x = samples if isinstance(samples, np.ndarray) else np.asarray(samples)
    if x.dtype == np.int16:
        x = x.astype(np.float32) / np.float32(PCM16_SCALE)
    elif x.dtype.kind == "f":
        x = x if x.dtype is _F32 else x.astype(np.float32)
    else:
        raise ShapeError(
            f"{where}: samples of dtype {x.dtype} are not accepted; expected float samples in [-1, 1] or int16 PCM"
        )
    if x.ndim != 1:
        raise ShapeError(f"{where}: expected mono samples of shape [samples], got shape {list(x.shape)}")
    if check_finite and not all_finite(x):
        bad = int((~np.isfinite(x)).sum())
        raise NonFiniteSamplesError(f"{where}: {bad} of {x.size} samples are NaN or Inf; expected finite samples")
    return x


def all_finite(x: np.ndarray) -> bool:
    """No NaN or infinity in the float array ``x`` (any shape; ``True`` when empty).

    One dot product first (NaN or Inf anywhere makes it non-finite), which costs a fraction of
    ``np.isfinite(x).all()`` on the chunks of a stream; only when it is not finite (a NaN/Inf, or finite
    values whose squares overflow) is every value looked at.
    """
    if not x.size:
        return True
    flat = x.ravel()
    return math.isfinite(float(np.dot(flat, flat))) or bool(np.isfinite(flat).all())


def encode_samples(samples: Any, encoding: SampleEncoding = "float32") -> bytes:
    """Samples ``[S]`` -> little-endian bytes. ``int16``: ``round(x * 32768)`` clipped to the int16 range."""
    x = to_float32(samples, where="encode_samples")
    if encoding == "int16":
        return np.clip(np.round(x * PCM16_SCALE), -32768, 32767).astype(WIRE_DTYPES["int16"]).tobytes()
    if encoding == "float32":
        return x.astype(WIRE_DTYPES["float32"]).tobytes()
    raise ShapeError(f"sample encoding must be 'float32' or 'int16', got {encoding!r}")


def decode_samples(data: bytes | bytearray | memoryview, encoding: SampleEncoding = "float32", *,
                   where: str = "payload", check_finite: bool = True) -> np.ndarray:
    """Little-endian bytes -> float32 samples ``[S]`` (int16 scaled by ``1 / 32768``); validated as above."""
    if encoding not in WIRE_DTYPES:
        raise ShapeError(f"{where}: sample encoding must be 'float32' or 'int16', got {encoding!r}")
    width = WIRE_DTYPES[encoding].itemsize
    if len(data) % width:
        raise ShapeError(f"{where}: {len(data)} bytes is not a whole number of {encoding} samples ({width} bytes each)")
    return to_float32(np.frombuffer(data, dtype=WIRE_DTYPES[encoding]).astype(_NATIVE[encoding]), where=where,
                      check_finite=check_finite)


__all__ = ["PCM16_SCALE", "WIRE_DTYPES", "SampleEncoding", "all_finite", "decode_samples", "encode_samples", "to_float32"]

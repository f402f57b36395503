"""The portable snapshot of one stream: format ``rnnstream.snapshot/2``.

An uncompressed NumPy ``.npz`` (read with ``allow_pickle=False``) holding:

* ``header``: a JSON string (0-d unicode array): ``format``, ``weights_hash``, ``stats_hash``, ``feature_config``
  (JSON), ``stream_id``, ``sample_rate`` (the rate of the samples the stream receives; ``null`` for sensor
  streams), ``samples_seen``, ``frames_seen``, ``t``, ``ended``, and ``resampler`` (its counters, or ``null``);
* ``carry``: the featurizer carry (audio: float32 ``[context + pending]``; sensors: float64 ``[k]``);
* ``last_output``: float32 ``[output_dim]``, or ``[0]`` before the first frame;
* ``state.<name>``: one array per model state, without the batch axis;
* ``resampler``: float64 ``[K]``, the resampler's input window (only when the stream resamples).

:func:`read_snapshot` checks the size before unpacking anything and every array against the model (its state
specs, feature config and output size) before a session is made, so a forged snapshot is refused with a
:class:`StateError` naming what is wrong, never accepted to fail later inside a batch.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.errors import ConfigError, StateError
from rnnstream.pipeline.model_info import ModelInfo

SNAPSHOT_FORMAT = "rnnstream.snapshot/2"
#: Snapshots larger than this are refused before anything is unpacked (a stream's state is a few KB).
MAX_SNAPSHOT_BYTES = 4 * 1024 * 1024


@dataclass
class SnapshotData:
    """A validated snapshot, ready to become a session."""

    header: dict[str, Any]
    carry: np.ndarray
    last_output: np.ndarray | None
    states: dict[str, np.ndarray]  # {name: [1, *shape]} float32
    resampler: np.ndarray | None


def write_snapshot(header: dict[str, Any], carry: np.ndarray, last_output: np.ndarray | None,
                   states: dict[str, np.ndarray], resampler: np.ndarray | None) -> bytes:
    """Pack one stream's state (``states`` with their batch axis of 1) into ``rnnstream.snapshot/2`` bytes."""
    arrays = {
        "header": np.array(json.dumps({"format": SNAPSHOT_FORMAT, **header})),
        "carry": np.asarray(carry),
        "last_output": np.zeros(0, np.float32) if last_output is None else np.asarray(last_output, np.float32),
    }
    arrays.update({f"state.{k}": np.asarray(v[0]) for k, v in states.items()})
    if resampler is not None:
        arrays["resampler"] = np.asarray(resampler, np.float64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stubs read **arrays as allow_pickle
    return buf.getvalue()


def _unpack(blob: bytes, max_bytes: int) -> dict[str, np.ndarray]:
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise StateError(f"a snapshot is bytes, got {type(blob).__name__}")
    if len(blob) > max_bytes:
        raise StateError(f"snapshot of {len(blob)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        with zipfile.ZipFile(io.BytesIO(bytes(blob))) as zf:
            declared = sum(i.file_size for i in zf.infolist())
        if declared > max_bytes:  # a small zip that inflates to gigabytes
            raise StateError(f"snapshot unpacks to {declared} bytes, over the limit of {max_bytes} bytes")
        with np.load(io.BytesIO(bytes(blob)), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except StateError:
        raise
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise StateError(f"not an rnnstream snapshot ({type(exc).__name__}: {exc})") from None


def _header(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    raw = arrays.pop("header", None)
    if raw is None or raw.dtype.kind != "U" or raw.ndim != 0:
        raise StateError("not an rnnstream snapshot: no JSON header")
    try:
        header = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise StateError(f"snapshot header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise StateError("snapshot header is not a JSON object")
    if header.get("format") != SNAPSHOT_FORMAT:
        raise StateError(f"snapshot format {header.get('format')!r} is not supported (expected {SNAPSHOT_FORMAT!r})")
    for key, kind in (("samples_seen", int), ("frames_seen", int), ("t", (int, float)), ("stream_id", str)):
        value = header.get(key)
        negative = kind is int and isinstance(value, int) and value < 0
        if isinstance(value, bool) or not isinstance(value, kind) or negative:
            raise StateError(f"snapshot header field {key!r} is {value!r}; expected {getattr(kind, '__name__', 'a number')}")
    if not np.isfinite(header["t"]):
        raise StateError(f"snapshot header field 't' is {header['t']!r}; expected a finite number")
    return header


def _check_model(header: dict[str, Any], info: ModelInfo) -> None:
    if header.get("weights_hash") != info.weights_hash or header.get("stats_hash") != info.stats_hash:
        raise StateError(
            f"snapshot belongs to model {header.get('weights_hash')} (stats {header.get('stats_hash')}), "
            f"not to this model {info.weights_hash} (stats {info.stats_hash}); refusing to restore"
        )
    try:
        same = FeatureConfig.from_json(header["feature_config"]) == info.feature_config
    except (KeyError, TypeError, ValueError, ConfigError):
        same = False
    if not same:
        raise StateError("snapshot was taken with another feature config; refusing to restore")


def _array(arrays: dict[str, np.ndarray], name: str, shape: tuple[int, ...] | None, kinds: str = "f") -> np.ndarray:
    arr = arrays.get(name)
    if arr is None:
        raise StateError(f"snapshot lacks the array {name!r}")
    if arr.dtype.kind not in kinds or (shape is not None and arr.shape != shape) or (shape is None and arr.ndim != 1):
        want = f"[{', '.join(map(str, shape))}]" if shape is not None else "[n]"
        raise StateError(f"snapshot array {name!r} is {arr.dtype} {list(arr.shape)}; expected float {want}")
    if arr.size and not np.isfinite(arr).all():
        raise StateError(f"snapshot array {name!r} holds NaN or Inf")
    return arr


def read_snapshot(blob: bytes, info: ModelInfo, initial_carry: np.ndarray, *,
                  max_bytes: int = MAX_SNAPSHOT_BYTES) -> SnapshotData:
    """Unpack and validate a snapshot for the model ``info`` (:class:`StateError` naming what does not fit).

    ``initial_carry`` is the featurizer's initial carry: a sensor carry must have its shape, an audio carry
    ``context`` to ``context + hop - 1`` samples.
    """
    arrays = _unpack(blob, max_bytes)
    header = _header(arrays)
    _check_model(header, info)
    states = {s.name: _array(arrays, f"state.{s.name}", tuple(s.shape))[None].astype(np.float32)
              for s in info.state_specs}
    extra = sorted(k for k in arrays if k.startswith("state.") and k[6:] not in states)
    if extra:
        raise StateError(f"snapshot has states {extra} this model does not have")
    carry = _array(arrays, "carry", None)
    audio = info.feature_config.audio
    if audio is not None and not audio.context <= carry.size < audio.context + audio.step_length:
        raise StateError(f"snapshot carry has {carry.size} samples; expected {audio.context} to "
                         f"{audio.context + audio.step_length - 1} (context + pending)")
    if audio is None and carry.shape != initial_carry.shape:
        raise StateError(f"snapshot carry has shape {list(carry.shape)}; expected {list(initial_carry.shape)}")
    carry = carry.astype(initial_carry.dtype)
    last = _array(arrays, "last_output", None)
    if last.size not in (0, info.model_config.output_dim):
        raise StateError(f"snapshot last_output has {last.size} values; expected {info.model_config.output_dim}")
    resampler = _array(arrays, "resampler", None) if header.get("resampler") is not None else None
    return SnapshotData(header, carry, last.astype(np.float32) if last.size else None, states, resampler)


__all__ = ["MAX_SNAPSHOT_BYTES", "SNAPSHOT_FORMAT", "SnapshotData", "read_snapshot", "write_snapshot"]

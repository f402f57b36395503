"""The streaming runtime: per-stream sessions over a stateless model backend.

One small abstraction, :class:`Backend`, has two implementations: ``rnnstream.models.backend.TorchBackend``
(PyTorch) and ``rnnstream.export.runtime.OnnxBackend`` (onnxruntime). A backend is stateless; it maps
``(x, states) -> (y, states)`` for a *batch* of streams. Everything stateful lives here:

* :class:`StreamSession` holds one stream's featurizer carry, model states and position, and turns raw
  chunks (audio samples, or sensor rows) into predictions. Offline prediction is a session fed one chunk.
* :func:`step_streams` advances many sessions in one backend call (states gathered along axis 0 and
  scattered back), which the Beam streaming job and the server use to batch across streams.
* :meth:`StreamSession.snapshot` / :meth:`StreamSession.restore` move one stream's whole state between
  processes and between backends (ONNX <-> PyTorch, features graph <-> raw-audio graph).

Backends take either features (``input_kind == "features"``: ``x [B, T, F]``) or raw audio
(``input_kind == "audio"``: ``x [B, S]`` with ``S`` a multiple of the hop, plus a ``frontend_carry``
state ``[B, win - hop]``). The session hides the difference: its carry is always the featurizer's carry
(context + pending samples), whose first ``win - hop`` samples are the graph's ``frontend_carry``.

Snapshot format (``rnnstream.snapshot/1``): an uncompressed NumPy ``.npz`` (loaded with
``allow_pickle=False``) holding ``header`` (a JSON string as a 0-d unicode array: ``format``,
``weights_hash``, ``stats_hash``, ``feature_config`` JSON, ``stream_id``, ``samples_seen``,
``frames_seen``, ``t``), ``carry`` (the featurizer carry), ``last_output`` (``[O]``, or ``[0]`` before
the first frame) and one array ``state.<name>`` per model state, without the batch axis.
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from rnnstream.models.rnn import ModelConfig, StateSpec
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.errors import ShapeError, StateError
from rnnstream.pipeline.features import AudioFeaturizer, as_samples

SNAPSHOT_FORMAT = "rnnstream.snapshot/1"
FRONTEND_STATE = "frontend_carry"
InputKind = Literal["features", "audio"]


# ----------------------------------------------------------------------------------------------
# Model identity and the backend abstraction
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """Everything a runtime needs to know about a model; stored as ONNX ``metadata_props``.

    ``state_specs`` are the *model* states (``h``, ``c``, ``pool_sum``, ``pool_count``); a raw-audio graph
    has one more input/output state, ``frontend_carry`` ``[win - hop]``, not listed here.
    """

    feature_config: FeatureConfig
    model_config: ModelConfig
    labels: tuple[str, ...]
    weights_hash: str
    stats_hash: str
    state_specs: tuple[StateSpec, ...]
    input_kind: InputKind = "features"
    version: str = ""

    @classmethod
    def from_model(cls, model: Any, feature_config: FeatureConfig, labels: Sequence[str] = (),
                   input_kind: InputKind = "features") -> "ModelInfo":
        """From a ``rnnstream.models.rnn.StreamingRNN``."""
        from rnnstream import __version__

        return cls(
            feature_config=feature_config,
            model_config=model.config,
            labels=tuple(labels),
            weights_hash=model.weights_hash(),
            stats_hash=model.stats_hash(),
            state_specs=tuple(model.state_spec()),
            input_kind=input_kind,
            version=__version__,
        )

    @property
    def task(self) -> str:
        return self.model_config.task

    def to_metadata(self) -> dict[str, str]:
        """String key/values for ONNX ``metadata_props`` (keys prefixed ``rnnstream.``)."""
        return {
            "rnnstream.version": self.version,
            "rnnstream.feature_config": self.feature_config.to_json(),
            "rnnstream.model_config": self.model_config.to_json(),
            "rnnstream.labels": json.dumps(list(self.labels)),
            "rnnstream.task": self.model_config.task,
            "rnnstream.weights_hash": self.weights_hash,
            "rnnstream.stats_hash": self.stats_hash,
            "rnnstream.input_kind": self.input_kind,
            "rnnstream.states": json.dumps([{"name": s.name, "shape": list(s.shape), "dtype": s.dtype}
                                            for s in self.state_specs]),
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "ModelInfo":
        missing = [k for k in ("rnnstream.feature_config", "rnnstream.model_config", "rnnstream.weights_hash",
                               "rnnstream.states") if k not in meta]
        if missing:
            raise StateError(f"model metadata lacks {missing}; was it exported by rnnstream?")
        return cls(
            feature_config=FeatureConfig.from_json(meta["rnnstream.feature_config"]),
            model_config=ModelConfig.from_dict(json.loads(meta["rnnstream.model_config"])),
            labels=tuple(json.loads(meta.get("rnnstream.labels", "[]"))),
            weights_hash=meta["rnnstream.weights_hash"],
            stats_hash=meta.get("rnnstream.stats_hash", ""),
            state_specs=tuple(StateSpec(s["name"], tuple(s["shape"]), s.get("dtype", "float32"))
                              for s in json.loads(meta["rnnstream.states"])),
            input_kind=meta.get("rnnstream.input_kind", "features"),  # type: ignore[arg-type]
            version=meta.get("rnnstream.version", ""),
        )

    def initial_states(self, batch_size: int) -> dict[str, np.ndarray]:
        """Zero model states ``{name: [batch_size, *shape]}`` (no ``frontend_carry``)."""
        return {s.name: np.zeros((batch_size, *s.shape), dtype=np.float32) for s in self.state_specs}


class Backend(Protocol):
    """A stateless streaming step over a batch of streams.

    ``step(x, states) -> (y, new_states)`` where, for ``info.input_kind == "features"``, ``x`` is float32
    ``[B, T, F]``; for ``"audio"``, ``x`` is float32 ``[B, S]`` (``S`` a multiple of the hop) and ``states``
    also holds ``frontend_carry [B, win - hop]``. ``y`` is float32 ``[B, T, output_dim]``; every state is
    float32 with the batch on axis 0. Backends must not keep per-stream state.
    """

    info: ModelInfo

    def step(self, x: np.ndarray, states: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        ...


# ----------------------------------------------------------------------------------------------
# Interpreting outputs
# ----------------------------------------------------------------------------------------------


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Prediction:
    """The current prediction of a stream, from the output of its latest frame.

    ``classify``/``tag``: ``label`` is the arg-max label name (or index as a string when the model has no
    label names) and ``scores`` the softmax probabilities. ``forecast``: ``label`` is the forecast
    ``[horizon][len(target_dims)]`` (normalised scale) and ``scores`` the same values flat. ``generate``:
    ``label`` is the predicted next frame, ``scores`` the same.
    """

    label: Any
    scores: list[float]
    frames: int

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "scores": self.scores, "frames": self.frames}


def interpret(info: ModelInfo, output: np.ndarray, frames: int) -> Prediction:
    """Turn one frame's output ``[output_dim]`` into a :class:`Prediction`."""
    out = np.asarray(output, dtype=np.float64)
    task = info.model_config.task
    if task in ("classify", "tag"):
        probs = softmax(out)
        k = int(np.argmax(probs))
        label = info.labels[k] if k < len(info.labels) else str(k)
        return Prediction(label=label, scores=[float(p) for p in probs], frames=frames)
    values = [float(v) for v in out]
    if task == "forecast":
        d = len(info.model_config.target_dims)
        return Prediction(label=[values[i : i + d] for i in range(0, len(values), d)], scores=values, frames=frames)
    return Prediction(label=values, scores=values, frames=frames)


@dataclass(frozen=True)
class ChunkResult:
    """What one pushed chunk produced.

    ``t``: seconds of stream consumed (audio: samples pushed / rate; sensors: last timestamp pushed).
    ``outputs``: float32 ``[T, output_dim]`` for the frames completed by this chunk (``T`` may be 0).
    ``prediction``: the stream's current prediction (``None`` before its first frame), computed on first
    access: a caller that only needs ``outputs`` pays nothing for softmax and label lookup.
    ``segment_starts``: indices into ``outputs`` where model state was reset (sensor gaps, policy split).
    """

    t: float
    outputs: np.ndarray
    info: ModelInfo = field(repr=False)
    last_output: np.ndarray | None = field(repr=False)
    frames_seen: int = 0
    segment_starts: tuple[int, ...] = ()

    @functools.cached_property
    def prediction(self) -> Prediction | None:
        if self.last_output is None:
            return None
        return interpret(self.info, self.last_output, self.frames_seen)

    @property
    def n_frames(self) -> int:
        return int(self.outputs.shape[0])

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"t": round(self.t, 6), "frames": self.n_frames}
        if self.prediction is not None:
            d.update(label=self.prediction.label, scores=self.prediction.scores)
        else:
            d.update(label=None, scores=[])
        if self.segment_starts:
            d["segment_starts"] = list(self.segment_starts)
        return d


# ----------------------------------------------------------------------------------------------
# Featurizer adapter: one interface for audio and sensor streams
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SensorChunk:
    """A chunk of sensor rows: ``timestamps [N]`` (float64 seconds) and ``values [N, C]``."""

    timestamps: np.ndarray
    values: np.ndarray


class _Featurizer:
    """``step(chunk, carry) -> (frames [T, F], carry, segment_starts, t)`` for audio or sensors."""

    def __init__(self, cfg: FeatureConfig):
        self.cfg = cfg
        if cfg.kind == "audio":
            self._audio = AudioFeaturizer(cfg)
            self._sensor = None
        else:
            from rnnstream.pipeline.sensors import SensorFeaturizer

            self._audio = None
            self._sensor = SensorFeaturizer(cfg)

    def initial_state(self) -> np.ndarray:
        return (self._audio or self._sensor).initial_state()  # type: ignore[union-attr]

    def step(self, chunk: Any, carry: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], float | None]:
        if self._audio is not None:
            frames, carry = self._audio.step(chunk, carry)
            return frames, carry, (), None
        if isinstance(chunk, SensorChunk):
            ts, vals = chunk.timestamps, chunk.values
        elif isinstance(chunk, tuple) and len(chunk) == 2:
            ts, vals = chunk
        else:
            raise ShapeError(f"a sensor stream takes SensorChunk(timestamps, values) chunks, got {type(chunk).__name__}")
        ts = np.asarray(ts, dtype=np.float64)
        out, carry = self._sensor.step(ts, np.asarray(vals), carry)  # type: ignore[union-attr]
        t_last = float(ts[-1]) if ts.size else None
        return np.asarray(out.values, dtype=np.float32), carry, tuple(out.segment_starts), t_last


# ----------------------------------------------------------------------------------------------
# Sessions
# ----------------------------------------------------------------------------------------------


@dataclass
class _Work:
    """A prepared chunk: the backend input for one stream (batch 1) and what to commit afterwards."""

    x: np.ndarray | None  # [1, T, F] or [1, S]; None when no frame completes
    carry: np.ndarray
    segment_starts: tuple[int, ...]
    samples: int
    t: float | None
    extra_states: dict[str, np.ndarray] = field(default_factory=dict)


class StreamSession:
    """One stream's state over a backend: ``push(chunk) -> ChunkResult``; ``final() -> Prediction``."""

    def __init__(self, backend: Backend, stream_id: str = ""):
        self.backend = backend
        self.info = backend.info
        self.stream_id = stream_id
        self._featurizer = _Featurizer(self.info.feature_config)
        acfg = self.info.feature_config.audio
        self._ctx = acfg.context if acfg is not None else 0
        self._hop = acfg.hop_length if acfg is not None else 1
        self.reset()

    # -- state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything: initial featurizer carry and model states, position zero."""
        self.carry = self._featurizer.initial_state()
        self.states = self.info.initial_states(1)
        self.samples_seen = 0
        self.frames_seen = 0
        self.t = 0.0
        self.last_output: np.ndarray | None = None

    def final(self) -> Prediction | None:
        """The current (after the last chunk: final) prediction; ``None`` before the first frame."""
        if self.last_output is None:
            return None
        return interpret(self.info, self.last_output, self.frames_seen)

    # -- stepping ------------------------------------------------------------------------------
    def push(self, chunk: Any) -> ChunkResult:
        """Consume one chunk: audio samples ``[S]`` (float, any ``S >= 0``) or a :class:`SensorChunk`."""
        work = self._prepare(chunk)
        if work.x is None or not work.segment_starts:
            y, states = self._run(work)
            return self._commit(work, y, states)
        # Sensor gaps (policy split): reset the model state at each segment start.
        bounds = [0, *work.segment_starts, work.x.shape[1]]
        ys, states = [], self.states
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            if i > 0:
                states = self.info.initial_states(1)
            if b > a:
                y, states = self.backend.step(work.x[:, a:b], states)
                ys.append(y)
        y = np.concatenate(ys, axis=1) if ys else np.zeros((1, 0, self.info.model_config.output_dim), np.float32)
        return self._commit(work, y, states)

    def _prepare(self, chunk: Any) -> _Work:
        if self.info.input_kind == "audio":
            x = as_samples(chunk)
            buf = np.concatenate((self.carry, x))
            n = (buf.shape[0] - self._ctx) // self._hop
            if n <= 0:
                return _Work(None, buf, (), x.size, None)
            return _Work(
                buf[self._ctx : self._ctx + n * self._hop][None],
                buf[n * self._hop :].copy(),
                (),
                x.size,
                None,
                {FRONTEND_STATE: buf[None, : self._ctx]},
            )
        frames, carry, segs, t = self._featurizer.step(chunk, self.carry)
        samples = int(np.asarray(chunk).shape[0]) if self.info.feature_config.kind == "audio" else 0
        if frames.shape[0] == 0:
            return _Work(None, carry, (), samples, t)
        return _Work(frames[None], carry, tuple(s for s in segs if 0 <= s < frames.shape[0]), samples, t)

    def _run(self, work: _Work) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        if work.x is None:
            return None, self.states
        y, states = self.backend.step(work.x, {**self.states, **work.extra_states})
        states.pop(FRONTEND_STATE, None)
        return y, states

    def _commit(self, work: _Work, y: np.ndarray | None, states: dict[str, np.ndarray]) -> ChunkResult:
        self.carry = work.carry
        self.states = states
        self.samples_seen += work.samples
        if self.info.feature_config.kind == "audio":
            self.t = self.samples_seen / self.info.feature_config.audio.sample_rate  # type: ignore[union-attr]
        elif work.t is not None:
            self.t = work.t
        if y is None or y.shape[1] == 0:
            outputs = np.zeros((0, self.info.model_config.output_dim), dtype=np.float32)
        else:
            outputs = np.asarray(y[0], dtype=np.float32)
            self.frames_seen += outputs.shape[0]
            self.last_output = outputs[-1]
        return ChunkResult(t=self.t, outputs=outputs, info=self.info, last_output=self.last_output,
                           frames_seen=self.frames_seen, segment_starts=work.segment_starts)

    # -- snapshots -----------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """This stream's whole state in the portable ``rnnstream.snapshot/1`` format (see module doc)."""
        header = {
            "format": SNAPSHOT_FORMAT,
            "weights_hash": self.info.weights_hash,
            "stats_hash": self.info.stats_hash,
            "feature_config": self.info.feature_config.to_json(),
            "stream_id": self.stream_id,
            "samples_seen": self.samples_seen,
            "frames_seen": self.frames_seen,
            "t": self.t,
        }
        arrays = {
            "header": np.array(json.dumps(header)),
            "carry": np.asarray(self.carry),
            "last_output": np.zeros(0, np.float32) if self.last_output is None else self.last_output,
        }
        arrays.update({f"state.{k}": np.asarray(v[0]) for k, v in self.states.items()})
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def restore(cls, backend: Backend, blob: bytes, stream_id: str | None = None) -> "StreamSession":
        """A session continuing exactly where the snapshot left off; refuses another model's snapshot."""
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            header = json.loads(str(arrays.pop("header")))
        except (ValueError, OSError, KeyError, json.JSONDecodeError) as exc:
            raise StateError(f"not an rnnstream snapshot ({type(exc).__name__}: {exc})") from None
        if header.get("format") != SNAPSHOT_FORMAT:
            raise StateError(f"snapshot format {header.get('format')!r} is not supported (expected {SNAPSHOT_FORMAT!r})")
        info = backend.info
        if header["weights_hash"] != info.weights_hash or header["stats_hash"] != info.stats_hash:
            raise StateError(
                f"snapshot belongs to model {header['weights_hash']} (stats {header['stats_hash']}), "
                f"not to this model {info.weights_hash} (stats {info.stats_hash}); refusing to restore"
            )
        if FeatureConfig.from_json(header["feature_config"]) != info.feature_config:
            raise StateError("snapshot was taken with another feature config; refusing to restore")
        session = cls(backend, stream_id=header.get("stream_id", "") if stream_id is None else stream_id)
        states = {k[len("state."):]: v[None].astype(np.float32) for k, v in arrays.items() if k.startswith("state.")}
        expected = {s.name: (1, *s.shape) for s in info.state_specs}
        if {k: v.shape for k, v in states.items()} != expected:
            raise StateError(f"snapshot states {sorted(states)} do not match the model's {expected}")
        session.states = states
        session.carry = arrays["carry"]
        session.samples_seen = int(header["samples_seen"])
        session.frames_seen = int(header["frames_seen"])
        session.t = float(header["t"])
        session.last_output = arrays["last_output"] if arrays["last_output"].size else None
        return session


# ----------------------------------------------------------------------------------------------
# Many streams in one call; whole-sequence mode
# ----------------------------------------------------------------------------------------------


def gather_states(states: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack per-stream states (each batch 1, or any batch) along axis 0."""
    return {k: np.concatenate([s[k] for s in states], axis=0) for k in states[0]}


def scatter_states(states: dict[str, np.ndarray], sizes: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Inverse of :func:`gather_states`."""
    cuts = np.cumsum(sizes)[:-1]
    parts = {k: np.split(v, cuts, axis=0) for k, v in states.items()}
    return [{k: parts[k][i] for k in states} for i in range(len(sizes))]


def step_streams(sessions: Sequence[StreamSession], chunks: Sequence[Any], max_batch: int = 256) -> list[ChunkResult]:
    """Advance each session by its chunk, batching streams whose chunks give the same input length.

    Equal to ``[s.push(c) for s, c in zip(sessions, chunks)]``, with at most one backend call per distinct
    input length (per ``max_batch`` streams). A session must appear at most once per call.
    """
    if len(sessions) != len(chunks):
        raise ShapeError(f"step_streams got {len(sessions)} sessions and {len(chunks)} chunks")
    if len({id(s) for s in sessions}) != len(sessions):
        raise StateError("step_streams: a session appears twice in one call; its chunks must be applied in order")
    results: list[ChunkResult | None] = [None] * len(sessions)
    groups: dict[tuple[int, ...], list[tuple[int, _Work]]] = {}
    for i, (s, c) in enumerate(zip(sessions, chunks)):
        work = s._prepare(c)
        if work.x is None or work.segment_starts:
            if work.x is None:
                results[i] = s._commit(work, None, s.states)
            else:  # rare: sensor gap resets inside the chunk; run alone
                results[i] = s.push(c)
            continue
        groups.setdefault((id(s.backend), *work.x.shape[1:]), []).append((i, work))
    for members in groups.values():
        for start in range(0, len(members), max_batch):
            part = members[start : start + max_batch]
            backend = sessions[part[0][0]].backend
            x = np.concatenate([w.x for _, w in part], axis=0)
            st = gather_states([{**sessions[i].states, **w.extra_states} for i, w in part])
            y, new = backend.step(x, st)
            new.pop(FRONTEND_STATE, None)
            for (i, w), yi, si in zip(part, np.split(y, len(part), axis=0), scatter_states(new, [1] * len(part))):
                results[i] = sessions[i]._commit(w, yi, si)
    return results  # type: ignore[return-value]


def predict_features(backend: Backend, features: np.ndarray) -> Prediction | None:
    """Whole-sequence mode over precomputed features ``[T, F]`` (features backends only)."""
    if backend.info.input_kind != "features":
        raise ShapeError("predict_features needs a backend that takes features; use predict_signal for raw-audio graphs")
    feats = np.asarray(features, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[1] != backend.info.feature_config.dim:
        raise ShapeError(f"expected features [T, {backend.info.feature_config.dim}], got {list(feats.shape)}")
    if feats.shape[0] == 0:
        return None
    y, _ = backend.step(feats[None], backend.info.initial_states(1))
    return interpret(backend.info, y[0, -1], feats.shape[0])


def predict_signal(backend: Backend, signal: Any) -> Prediction | None:
    """Whole-sequence mode over a raw signal (audio samples or a SensorChunk): one chunk, one call."""
    session = StreamSession(backend)
    session.push(signal)
    return session.final()

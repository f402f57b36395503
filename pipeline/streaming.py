"""The streaming runtime: per-stream sessions over a stateless model backend.

A backend (:class:`~rnnstream.pipeline.model_info.Backend`: ``rnnstream.models.backend.TorchBackend`` or
:class:`rnnstream.pipeline.onnx_backend.OnnxBackend`) maps ``(x, states) -> (y, states)`` for a *batch* of streams.
Everything stateful lives here:

* :class:`StreamSession` holds one stream's resampler, featurizer carry, model states and position, and turns raw
  chunks (audio samples at the rate the stream declared, or sensor rows) into predictions. Offline prediction is
  a session fed one chunk and ended.
* :func:`step_streams` advances many sessions in one backend call (states gathered along axis 0 and
  scattered back), which the Beam streaming job and the server use to batch across streams.
* :meth:`StreamSession.snapshot` / :meth:`StreamSession.restore` move one stream's whole state between
  processes and between backends (ONNX <-> PyTorch, features graph <-> raw-audio graph); the format is
  :mod:`rnnstream.pipeline.snapshot`.

**Sample rates are explicit.** An audio stream is opened with the rate of the samples it will receive
(``StreamSession(backend, sample_rate=8000)``); there is no default. Another rate than the model's is converted by
a :class:`~rnnstream.pipeline.resample.StreamResampler` whose output equals offline resampling of the whole signal
(it holds back about a millisecond until :meth:`StreamSession.end`), or refused with ``resample=False``. Samples
are float in ``[-1, 1]`` or int16 PCM (:mod:`rnnstream.pipeline.codec`, one scale everywhere).

Backends take either features (``input_kind == "features"``: ``x [B, T, F]``) or raw audio
(``input_kind == "audio"``: ``x [B, S]`` with ``S`` a multiple of the hop (x stack), plus a ``frontend_carry``
state ``[B, win - hop]``). The session hides the difference: its carry is always the featurizer's carry
(context + pending samples), whose first ``win - hop`` samples are the graph's ``frontend_carry``.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rnnstream.pipeline.codec import to_float32
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.errors import ConfigError, SampleRateError, ShapeError, StateError
from rnnstream.pipeline.features import AudioFeaturizer
from rnnstream.pipeline.model_info import FRONTEND_STATE, Backend, ModelInfo
from rnnstream.pipeline.resample import StreamResampler
from rnnstream.pipeline.snapshot import read_snapshot, write_snapshot


# ----------------------------------------------------------------------------------------------
# Interpreting outputs
# ----------------------------------------------------------------------------------------------


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Prediction:
    """The current prediction of a stream, from the output of its latest frame.

    * ``classify``/``tag``: ``label`` is the arg-max label name (the class index as a string when the model has
      no label names) and ``scores`` the softmax probability of every label, keyed by label name.
    * ``forecast``: ``label`` is the forecast ``[horizon][len(target_dims)]`` (normalised scale); ``scores``
      is empty.
    * ``generate``: ``label`` is the predicted next frame; ``scores`` is empty.

    ``values`` is the frame's output as floats (probabilities for classify/tag, the flat forecast otherwise) and
    ``frames`` the number of frames the stream has produced.
    """

    label: Any
    scores: dict[str, float]
    values: list[float]
    frames: int

    @property
    def forecast(self) -> np.ndarray:
        """The forecast as float64 ``[horizon, n_targets]`` (forecasting models; ``[1, n]`` otherwise)."""
        return np.atleast_2d(np.asarray(self.label, dtype=np.float64))

    def to_dict(self) -> dict[str, Any]:
        """The JSON record: ``predicted`` (the model's answer), ``scores`` (classify/tag) or ``values``, ``frames``."""
        return {**prediction_fields(self), "frames": self.frames}


def prediction_fields(pred: Prediction | None) -> dict[str, Any]:
    """``predicted`` (``None`` before the first frame) and ``scores`` by label (classify/tag) or ``values``: the
    fields every record that carries a prediction uses (stream-job records, server replies, CLI lines)."""
    if pred is None:
        return {"predicted": None}
    return {"predicted": pred.label, **({"scores": pred.scores} if pred.scores else {"values": pred.values})}


def interpret(info: ModelInfo, output: np.ndarray, frames: int) -> Prediction:
    """Turn one frame's output ``[output_dim]`` into a :class:`Prediction`.

    Runs once per chunk of every stream (the server's and the stream job's replies): the softmax of these few
    values is computed on Python floats (float64, as ``softmax``), several NumPy calls cheaper at this size."""
    values = np.asarray(output, dtype=np.float64).tolist()
    config = info.model_config
    kind = config.kind
    names: Sequence[str] = ()
    if kind.outputs_logits:
        top = max(values)
        exps = [math.exp(v - top) for v in values]
        total = math.fsum(exps)
        values = [e / total for e in exps]
        names = info.labels if len(info.labels) == len(values) else label_names(info)
    return Prediction(label=kind.predicted(values, names, kind.step_width(config)),
                      scores=dict(zip(names, values)), values=values, frames=frames)


def label_names(info: ModelInfo) -> list[str]:
    """The model's label names, or the class indices as strings where it has none."""
    n = info.model_config.output_dim
    return [info.labels[k] if k < len(info.labels) else str(k) for k in range(n)]


@dataclass(frozen=True)
class ChunkResult:
    """What one pushed chunk produced.

    ``t``: seconds of stream consumed (audio: samples pushed / the stream's rate; sensors: last timestamp pushed).
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

    def frame_predictions(self) -> list[Prediction]:
        """One :class:`Prediction` per output frame of this chunk (tagging: the label of every frame)."""
        first = self.frames_seen - self.n_frames
        return [interpret(self.info, y, first + i + 1) for i, y in enumerate(self.outputs)]

    def to_dict(self) -> dict[str, Any]:
        """The JSON record: ``t``, ``frames`` (this chunk's), then the prediction (``predicted: null`` before one)."""
        d: dict[str, Any] = {"t": round(self.t, 6), "frames": self.n_frames, **prediction_fields(self.prediction)}
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
            self._audio: AudioFeaturizer | None = AudioFeaturizer.shared(cfg.audio)  # type: ignore[arg-type]
            self._sensor = None
        else:
            from rnnstream.pipeline.sensors import SensorFeaturizer

            self._audio = None
            self._sensor = SensorFeaturizer(cfg)

    @property
    def audio(self) -> AudioFeaturizer | None:
        """The audio featurizer (``None`` for sensor streams)."""
        return self._audio

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
    samples: int  # samples of the stream's own rate consumed
    t: float | None
    resampler: StreamResampler | None = None
    extra_states: dict[str, np.ndarray] = field(default_factory=dict)


def check_stream_rate(info: ModelInfo, sample_rate: int | None, resample: bool = True) -> tuple[int | None, bool]:
    """Check a stream's declared rate against the model: ``(rate, needs_resampling)``; raises
    :class:`ConfigError` (missing or malformed rate, or a rate for a sensor model) or :class:`SampleRateError`."""
    audio = info.feature_config.audio
    if audio is None:
        if sample_rate is not None:
            raise ConfigError(f"sample_rate={sample_rate!r} was given for a sensor model; sensor chunks carry "
                              "their own timestamps (leave sample_rate unset)")
        return None, False
    if sample_rate is None:
        raise ConfigError(f"an audio stream must declare the sample rate of the samples it will receive "
                          f"(sample_rate=...); this model runs at {audio.sample_rate} Hz")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ConfigError(f"sample_rate must be a positive integer in Hz, got {sample_rate!r}")
    if int(sample_rate) != audio.sample_rate and not resample:
        raise SampleRateError(f"the stream's sample rate {int(sample_rate)} Hz differs from the model's "
                              f"{audio.sample_rate} Hz and resampling is off")
    return int(sample_rate), int(sample_rate) != audio.sample_rate


class StreamSession:
    """One stream's state over a backend: ``push(chunk) -> ChunkResult``, ``end()``, ``final() -> Prediction``.

    Args:
        backend: the model (a :class:`~rnnstream.pipeline.model_info.Backend`).
        sample_rate: for audio models, the rate (Hz) of the samples this stream will push — required; another
            rate than the model's is resampled (see the module docstring). Must be ``None`` for sensor models.
        stream_id: a name carried into snapshots.
        resample: ``False`` refuses a rate other than the model's with :class:`SampleRateError` naming both.
    """

    def __init__(self, backend: Backend, *, sample_rate: int | None = None, stream_id: str = "",
                 resample: bool = True):
        self.backend = backend
        self.info = backend.info
        self.stream_id = stream_id
        self.sample_rate, self._resamples = check_stream_rate(self.info, sample_rate, resample)
        self._featurizer = _Featurizer(self.info.feature_config)
        acfg = self.info.feature_config.audio
        self._ctx = acfg.context if acfg is not None else 0
        self._hop = acfg.step_length if acfg is not None else 1  # samples per model frame
        self.reset()

    # -- state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything: initial resampler, featurizer carry and model states, position zero."""
        acfg = self.info.feature_config.audio
        self.resampler = StreamResampler(self.sample_rate, acfg.sample_rate) if self._resamples else None  # type: ignore[union-attr,arg-type]
        self.carry = self._featurizer.initial_state()
        self.states = self.info.initial_states(1)
        self.samples_seen = 0
        self.frames_seen = 0
        self.t = 0.0
        self.last_output: np.ndarray | None = None
        self.ended = False

    def final(self) -> Prediction | None:
        """The current prediction (after :meth:`end`: the final one); ``None`` before the first frame."""
        if self.last_output is None:
            return None
        return interpret(self.info, self.last_output, self.frames_seen)

    def peek_end(self) -> Prediction | None:
        """The prediction as if the stream ended now, leaving it open: with resampling, the resampler's held-back
        tail goes through the model on a copy of the session (pushing replaces its arrays, never writes into
        them); without, it is :meth:`final`."""
        if self.ended or self.resampler is None:
            return self.final()
        peek = copy.copy(self)
        peek.end()
        return peek.final()

    # -- stepping ------------------------------------------------------------------------------
    def push(self, chunk: Any) -> ChunkResult:
        """Consume one chunk: audio samples ``[S]`` (float in [-1, 1] or int16, any ``S >= 0``, at the stream's
        rate) or a :class:`SensorChunk`. Returns the outputs of the frames it completed."""
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

    def end(self) -> ChunkResult:
        """End the stream: flush the resampler's last samples through the model (nothing to flush without
        resampling). Afterwards :meth:`final` equals offline prediction over the whole signal, and pushes are refused."""
        work = self._prepare(_END)
        y, states = self._run(work)
        result = self._commit(work, y, states)
        self.ended = True
        return result

    def _prepare(self, chunk: Any) -> _Work:
        if self.ended:
            raise StateError(f"stream {self.stream_id!r} has ended; open a new stream to push more")
        if self.info.feature_config.kind != "audio":
            if chunk is _END:
                return _Work(None, self.carry, (), 0, None)
            frames, carry, segs, t = self._featurizer.step(chunk, self.carry)
            if frames.shape[0] == 0:
                return _Work(None, carry, (), 0, t)
            return _Work(frames[None], carry, tuple(s for s in segs if 0 <= s < frames.shape[0]), 0, t)
        x, samples, resampler = self._resample(chunk)
        if self.info.input_kind == "audio":
            return self._prepare_raw(x, samples, resampler)
        return self._featurize((x, samples, resampler))

    def _featurizes_audio(self) -> bool:
        """An open audio stream into a features graph (its chunks may be featurized with others')."""
        return self._featurizer.audio is not None and self.info.input_kind != "audio" and not self.ended

    def _featurize(self, resampled: tuple[np.ndarray, int, StreamResampler | None]) -> _Work:
        x, samples, resampler = resampled
        frames, carry = self._featurizer.step(x, self.carry)[:2]
        return _Work(frames[None] if frames.shape[0] else None, carry, (), samples, None, resampler)

    def _resample(self, chunk: Any) -> tuple[np.ndarray, int, StreamResampler | None]:
        """``(samples at the model's rate, samples consumed at the stream's rate, the resampler afterwards)``."""
        if chunk is _END:
            if self.resampler is None:
                return np.zeros(0, np.float32), 0, None
            rs = copy.copy(self.resampler)  # pushing replaces its arrays, never writes into them
            return rs.end(), 0, rs
        x = to_float32(chunk)
        if self.resampler is None:
            return x, x.shape[0], None
        rs = copy.copy(self.resampler)
        return rs.push(x), x.shape[0], rs

    def _prepare_raw(self, x: np.ndarray, samples: int, resampler: StreamResampler | None) -> _Work:
        buf = np.concatenate((self.carry, x))
        n = (buf.shape[0] - self._ctx) // self._hop
        if n <= 0:
            return _Work(None, buf, (), samples, None, resampler)
        return _Work(buf[self._ctx : self._ctx + n * self._hop][None], buf[n * self._hop :].copy(), (), samples,
                     None, resampler, {FRONTEND_STATE: buf[None, : self._ctx]})

    def _run(self, work: _Work) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        if work.x is None:
            return None, self.states
        y, states = self.backend.step(work.x, {**self.states, **work.extra_states})
        states.pop(FRONTEND_STATE, None)
        return y, states

    def _commit(self, work: _Work, y: np.ndarray | None, states: dict[str, np.ndarray]) -> ChunkResult:
        self.carry = work.carry
        self.states = states
        if work.resampler is not None:
            self.resampler = work.resampler
        self.samples_seen += work.samples
        if self.sample_rate is not None:
            self.t = self.samples_seen / self.sample_rate
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

    def __copy__(self) -> "StreamSession":
        """A shallow copy (the arrays shared: pushing replaces a session's arrays, never writes into them), as
        ``copy.copy`` makes it but without its generic protocol: the stream core copies a session per chunk
        to roll it back should the chunk fail."""
        twin = object.__new__(type(self))
        twin.__dict__.update(self.__dict__)
        return twin

    # -- snapshots -----------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """This stream's whole state in the portable format of :mod:`rnnstream.pipeline.snapshot`."""
        rs_buf, rs_counters = self.resampler.state() if self.resampler is not None else (None, None)
        header = {
            "weights_hash": self.info.weights_hash,
            "stats_hash": self.info.stats_hash,
            "feature_config": self.info.feature_config.to_json(),
            "stream_id": self.stream_id,
            "sample_rate": self.sample_rate,
            "samples_seen": self.samples_seen,
            "frames_seen": self.frames_seen,
            "t": self.t,
            "ended": self.ended,
            "resampler": rs_counters,
        }
        return write_snapshot(header, self.carry, self.last_output, self.states, rs_buf)

    @classmethod
    def restore(cls, backend: Backend, blob: bytes, *, sample_rate: int | None = None,
                stream_id: str | None = None) -> "StreamSession":
        """A session continuing exactly where the snapshot left off.

        The snapshot carries the stream's sample rate; ``sample_rate``, when given, must equal it. Refuses
        (:class:`StateError`) another model's snapshot and any array that does not fit this model.
        """
        info = backend.info
        data = read_snapshot(blob, info, _Featurizer(info.feature_config).initial_state())
        rate = data.header.get("sample_rate")
        if sample_rate is not None and rate != sample_rate:
            raise StateError(f"the snapshot's stream runs at {rate} Hz, not at the declared {sample_rate} Hz")
        try:
            session = cls(backend, sample_rate=rate, stream_id=data.header["stream_id"] if stream_id is None else stream_id)
        except ConfigError as exc:
            raise StateError(f"snapshot sample rate: {exc}") from None
        if (data.resampler is None) != (session.resampler is None):
            raise StateError("the snapshot's resampler state does not match its sample rate")
        if data.resampler is not None:
            session.resampler = StreamResampler.from_state(data.resampler, data.header["resampler"])
            if (session.resampler.orig_rate, session.resampler.new_rate) != (rate, info.feature_config.audio.sample_rate):  # type: ignore[union-attr]
                raise StateError("the snapshot's resampler converts other rates than the stream's")
        session.states, session.carry, session.last_output = data.states, data.carry, data.last_output
        session.samples_seen = data.header["samples_seen"]
        session.frames_seen = data.header["frames_seen"]
        session.t = float(data.header["t"])
        session.ended = bool(data.header.get("ended", False))
        return session


#: Marks the end of a stream in :meth:`StreamSession._prepare`.
_END = object()


# ----------------------------------------------------------------------------------------------
# Whole-sequence mode (many streams in one call: rnnstream.pipeline.batching)
# ----------------------------------------------------------------------------------------------


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


def predict_signal(backend: Backend, signal: Any, *, sample_rate: int | None = None) -> Prediction | None:
    """Whole-sequence mode over a raw signal (audio samples at ``sample_rate``, or a SensorChunk): one chunk, ended."""
    session = StreamSession(backend, sample_rate=sample_rate)
    session.push(signal)
    session.end()
    return session.final()


__all__ = [
    "ChunkResult",
    "check_stream_rate",
    "Prediction",
    "SensorChunk",
    "StreamSession",
    "interpret",
    "label_names",
    "predict_features",
    "predict_signal",
    "prediction_fields",
    "softmax",
]

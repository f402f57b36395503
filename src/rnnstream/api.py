"""The public API: load a model, open streams on it, predict offline.

::

    import rnnstream
    model = rnnstream.load("model.onnx")            # onnxruntime; a .pt checkpoint loads with PyTorch (train extra)
    stream = model.stream(sample_rate=8000)          # the rate of the samples you push; resampled to the model's
    for chunk in chunks:                             # any length, float32 in [-1, 1] or int16
        out = stream.push(chunk)                     # out.outputs: [T, O] for the frames this chunk completed
    print(stream.prediction.label, stream.prediction.scores)   # scores keyed by label name
    offline = model.predict("file.wav")              # or an array with sample_rate=...; equals the stream's final

Sensor models take ``stream.push((timestamps, values))`` (float seconds ``[N]``, values ``[N, C]``) and no
``sample_rate``; forecasting models answer with ``prediction.forecast`` (``[horizon, targets]``), tagging models
with a label per frame (``out.frame_predictions()``).

Loading an ``.onnx`` file imports neither PyTorch nor Apache Beam.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from rnnstream.pipeline.errors import ConfigError, SampleRateError, require
from rnnstream.pipeline.model_info import Backend, ModelInfo
from rnnstream.pipeline.streaming import (
    ChunkResult,
    Prediction,
    SensorChunk,
    StreamSession,
    check_stream_rate,
    label_names,
    predict_signal,
)

PathLike = str | os.PathLike[str]


def load_backend(path: PathLike, *, provider: str = "auto", threads: int | None = None,
                 raw_audio: bool = False) -> Backend:
    """The runtime backend for ``path``: :class:`~rnnstream.pipeline.onnx_backend.OnnxBackend` for ``.onnx`` files,
    ``rnnstream.models.backend.TorchBackend`` for checkpoints (anything else; needs the ``train`` extra).

    ``provider``: ``"auto"``/``"cpu"``/``"cuda"`` (for a checkpoint: the torch device; ``"auto"`` picks CUDA when
    available). ``threads``: onnxruntime's intra-op threads (``None``: one, which costs 2-4x less CPU per small
    batch than onnxruntime's own default on few cores), or for a checkpoint ``torch.set_num_threads``
    (process-wide, so only when given). ``raw_audio``: for a checkpoint, put the audio
    front end in the backend; for an ``.onnx`` file the graph decides, and ``raw_audio=True`` with a features
    graph raises :class:`ConfigError`.
    """
    p = os.fspath(path)
    if p.lower().endswith(".onnx"):
        from rnnstream.pipeline.onnx_backend import OnnxBackend

        backend = OnnxBackend(p, provider=provider, threads=1 if threads is None else threads)
        if raw_audio and backend.info.input_kind != "audio":
            raise ConfigError(f"raw_audio=True, but {p!r} is a features graph; export it with --raw-audio")
        return backend
    if provider not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"provider must be 'auto', 'cpu' or 'cuda', got {provider!r}")
    require("torch", "train", f"loading the checkpoint {p!r}")
    import torch

    from rnnstream.models.backend import TorchBackend

    if provider == "cuda" and not torch.cuda.is_available():
        raise ConfigError("provider 'cuda' asked for, but torch.cuda.is_available() is False; use provider='cpu'")
    device = "cuda" if provider == "cuda" or (provider == "auto" and torch.cuda.is_available()) else "cpu"
    if threads is not None:
        if int(threads) < 1:
            raise ConfigError(f"threads must be >= 1 (or None), got {threads}")
        torch.set_num_threads(int(threads))
    return TorchBackend.from_checkpoint(p, raw_audio=raw_audio, device=device)


class Stream:
    """One stream over a :class:`Model`: ``push`` chunks, read ``prediction``, ``end`` it (or use ``with``)."""

    def __init__(self, session: StreamSession):
        self.session = session

    def push(self, chunk: Any) -> ChunkResult:
        """Audio: samples ``[S]`` at the stream's rate (float in [-1, 1] or int16). Sensors: ``(timestamps,
        values)``. Returns the outputs ``[T, O]`` of the frames this chunk completed (``T`` may be 0)."""
        if isinstance(chunk, tuple) and self.session.info.feature_config.kind != "audio":
            chunk = SensorChunk(*chunk)
        return self.session.push(chunk)

    def end(self) -> ChunkResult:
        """End the stream (flushes the resampler); afterwards ``prediction`` is final and pushes are refused."""
        return self.session.end()

    @property
    def prediction(self) -> Prediction | None:
        """The prediction over everything pushed so far, as if the stream ended now (``None`` before a frame).

        When the stream resamples, the resampler holds back about a millisecond of audio until the end; this
        property accounts for it (one extra model step on a copy of the stream) so it equals offline prediction.
        """
        return self.session.peek_end()

    def snapshot(self) -> bytes:
        """The stream's whole state as bytes (resume it with :meth:`Model.restore`, on any backend of the model)."""
        return self.session.snapshot()

    @property
    def sample_rate(self) -> int | None:
        return self.session.sample_rate

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.session.ended:
            self.session.end()


class Model:
    """A loaded model (any backend). ``stream(sample_rate=...)`` opens a stream; ``predict`` runs offline."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.info: ModelInfo = backend.info

    def __repr__(self) -> str:
        return f"Model(task={self.task!r}, labels={list(self.labels)!r}, sample_rate={self.sample_rate}, backend={self.backend!r})"

    @property
    def labels(self) -> list[str]:
        """Class names (classify/tag; class indices as strings when the model has none), else ``[]``."""
        return label_names(self.info) if self.info.model_config.outputs_logits else []

    @property
    def task(self) -> str:
        return self.info.model_config.task

    @property
    def sample_rate(self) -> int | None:
        """The rate the model's features are computed at (audio models), else ``None``."""
        audio = self.info.feature_config.audio
        return audio.sample_rate if audio is not None else None

    def stream(self, *, sample_rate: int | None = None, resample: bool = True, stream_id: str = "") -> Stream:
        """Open a stream. Audio models need ``sample_rate`` (Hz) of the samples you will push; another rate than
        :attr:`sample_rate` is resampled, or refused with ``resample=False``. Sensor models take none."""
        return Stream(StreamSession(self.backend, sample_rate=sample_rate, stream_id=stream_id, resample=resample))

    def restore(self, snapshot: bytes, *, sample_rate: int | None = None) -> Stream:
        """A stream continuing from :meth:`Stream.snapshot` bytes (``sample_rate``, when given, must match)."""
        return Stream(StreamSession.restore(self.backend, snapshot, sample_rate=sample_rate))

    def predict(self, source: Any, *, sample_rate: int | None = None) -> Prediction | None:
        """Offline prediction over a whole recording.

        ``source``: an audio file path (its own rate is used; ``sample_rate``, when given, must match it), an
        array of samples with ``sample_rate``, or for sensor models a table path or ``(timestamps, values)``.
        Audio at another rate is resampled offline (``scipy.signal.resample_poly``) — the stream's final
        prediction over the same samples equals this one.
        """
        if self.info.feature_config.kind != "audio":
            return predict_signal(self.backend, self._sensor_signal(source))
        rate: int | None
        if isinstance(source, (str, os.PathLike)):
            from rnnstream.pipeline.audio_io import read_native

            samples, rate = read_native(source, channel=self.info.feature_config.audio.channel)  # type: ignore[union-attr]
            if sample_rate is not None and sample_rate != rate:
                raise SampleRateError(f"{os.fspath(source)}: the file's sample rate is {rate} Hz, not the "
                                      f"declared {sample_rate} Hz")
        else:
            samples, rate = source, sample_rate
        from rnnstream.pipeline.codec import to_float32
        from rnnstream.pipeline.resample import resample

        if rate is None:
            raise ConfigError(f"predict on an array of samples needs sample_rate=...; this model runs at "
                              f"{self.sample_rate} Hz")
        x = to_float32(samples, where="samples")
        model_rate = int(self.sample_rate)  # type: ignore[arg-type]
        if check_stream_rate(self.info, rate)[1]:
            x = resample(x, int(rate), model_rate)
        return predict_signal(self.backend, x, sample_rate=model_rate)

    def _sensor_signal(self, source: Any) -> SensorChunk:
        if isinstance(source, SensorChunk):
            return source
        if isinstance(source, tuple) and len(source) == 2:
            return SensorChunk(np.asarray(source[0], np.float64), np.asarray(source[1]))
        if isinstance(source, (str, os.PathLike)):
            from rnnstream.pipeline.sensors import read_sensor_table

            return SensorChunk(*read_sensor_table(os.fspath(source), self.info.feature_config))
        raise ConfigError(f"a sensor model predicts on a table path or (timestamps, values), got {type(source).__name__}")


def load(path: PathLike, *, provider: str = "auto", threads: int | None = None) -> Model:
    """Load an exported ``.onnx`` model (onnxruntime) or a ``.pt`` checkpoint (PyTorch, the ``train`` extra).

    ``provider``: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``; ``threads``: intra-op threads
    (see :func:`load_backend`: one onnxruntime thread unless given; PyTorch's setting is left alone unless given).
    """
    return Model(load_backend(path, provider=provider, threads=threads))


__all__ = ["Model", "Stream", "load", "load_backend"]

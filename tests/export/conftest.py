"""Small models and their exported graphs, shared by the export tests (exported once per session)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from rnnstream.models.rnn import StreamingRNN, rnn_classifier, rnn_forecaster, rnn_generator, rnn_tagger
from rnnstream.pipeline.config import FeatureConfig

# 8 kHz, 25 ms window / 10 ms hop: win 200, hop 80, 8 log-mel bands. Small and fast.
FC = FeatureConfig.audio_default(sample_rate=8000, n_mels=8)
DIM = FC.dim
HOP = FC.audio.hop_length  # type: ignore[union-attr]
RATE = FC.audio.sample_rate  # type: ignore[union-attr]
LABELS = ("yes", "no", "maybe")

CELLS = ("rnn_tanh", "lstm", "gru")
HEADS = ("classify_last", "classify_mean", "classify_attention", "tag", "forecast", "generate")


def make_model(cell: str, head: str, *, hidden: int = 12, layers: int = 2, seed: int = 0) -> StreamingRNN:
    """A small random model with non-trivial normalisation statistics."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mean = rng.normal(-4.0, 1.0, DIM).astype(np.float32)  # log-mel of quiet noise sits around -5..0
    std = rng.uniform(1.0, 3.0, DIM).astype(np.float32)
    kw = dict(input_dim=DIM, cell=cell, hidden_size=hidden, num_layers=layers)
    if head == "classify_last":
        m = rnn_classifier(num_classes=len(LABELS), **kw)
    elif head in ("classify_mean", "classify_attention"):
        m = rnn_classifier(num_classes=len(LABELS), pooling=head.split("_")[1], **kw)
    elif head == "tag":
        m = rnn_tagger(num_classes=len(LABELS), **kw)
    elif head == "forecast":
        m = rnn_forecaster(horizon=3, target_dims=(0, 5), **kw)
    elif head == "generate":
        m = rnn_generator(**kw)
    else:
        raise AssertionError(head)
    with torch.no_grad():
        m.feat_mean.copy_(torch.from_numpy(mean))
        m.feat_std.copy_(torch.from_numpy(std))
    return m.eval()


def labels_for(head: str) -> tuple[str, ...]:
    return LABELS if head.startswith("classify") or head == "tag" else ()


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., tuple[StreamingRNN, str]]:
    """``exported(cell, head, raw_audio=False) -> (model, path)``, each combination exported once."""
    from rnnstream.export.onnx_export import export_onnx

    cache: dict[tuple[str, str, bool], tuple[StreamingRNN, str]] = {}
    root = tmp_path_factory.mktemp("onnx")

    def get(cell: str, head: str, raw_audio: bool = False) -> tuple[StreamingRNN, str]:
        key = (cell, head, raw_audio)
        if key not in cache:
            model = make_model(cell, head)
            path = export_onnx(model, root / f"{cell}-{head}-{'raw' if raw_audio else 'feat'}.onnx", FC,
                               labels_for(head), raw_audio=raw_audio)
            cache[key] = (model, path)
        return cache[key]

    return get


def onnx_pair(model: torch.nn.Module, folder, raw_audio: bool = False) -> tuple[torch.nn.Module, object]:
    """``model`` exported to ``folder/m.onnx`` (features or raw-audio graph) and an ``OnnxBackend`` on it (one thread)."""
    from rnnstream.export.onnx_export import export_onnx
    from rnnstream.pipeline.onnx_backend import OnnxBackend

    path = export_onnx(model, folder / "m.onnx", FC, LABELS, raw_audio=raw_audio)
    return model, OnnxBackend(path, provider="cpu", threads=1)


def assert_streams_like_offline(model: torch.nn.Module, backend: object, signal: np.ndarray, cuts: list[int],
                                atol: float = 1e-4) -> None:
    """``signal`` pushed in pieces cut at ``cuts`` through an onnxruntime ``StreamSession`` of ``backend`` gives
    PyTorch ``model``'s offline outputs over the whole signal's features (every frame, to ``atol``)."""
    from rnnstream.pipeline.features import AudioFeaturizer
    from rnnstream.pipeline.streaming import StreamSession

    with torch.no_grad():
        want = model(torch.from_numpy(AudioFeaturizer(FC).featurize(signal))[None])[0].numpy()
    session = StreamSession(backend, sample_rate=RATE)
    got = np.concatenate([session.push(part).outputs for part in np.split(signal, cuts)])
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    """Quiet noise with a tone and an amplitude envelope, float32 ``[seconds * 8000]``."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 8000)
    t = np.arange(n) / 8000
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t)
    return (0.05 * rng.standard_normal(n) + 0.2 * env * np.sin(2 * np.pi * 440 * t)).astype(np.float32)

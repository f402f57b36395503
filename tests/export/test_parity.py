"""onnxruntime streaming equals PyTorch offline: every cell, every task head, features and raw-audio graphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnstream.pipeline.onnx_backend import OnnxBackend
from rnnstream.models.backend import TorchBackend
from rnnstream.pipeline.features import AudioFeaturizer
from rnnstream.pipeline.batching import step_streams
from rnnstream.pipeline.streaming import StreamSession, predict_features, predict_signal
from tests.export.conftest import CELLS, FC, HEADS, HOP, RATE, labels_for, noise

SIGNAL = noise(0.37, seed=3)  # 2960 samples = 37 frames
TOL = 1e-4

cuts_strategy = st.lists(st.integers(0, SIGNAL.size), min_size=0, max_size=8).map(sorted)


def offline(model: torch.nn.Module, signal: np.ndarray) -> np.ndarray:
    """PyTorch offline: Python featurizer over the whole signal, then ``model.forward``: ``[T, O]``."""
    feats = AudioFeaturizer(FC).featurize(signal)
    with torch.no_grad():
        return model(torch.from_numpy(feats)[None])[0].numpy()


def stream(backend: object, signal: np.ndarray, cuts: list[int]) -> np.ndarray:
    session = StreamSession(backend, sample_rate=RATE)  # type: ignore[arg-type]
    outs = [session.push(chunk).outputs for chunk in np.split(signal, cuts)]
    return np.concatenate(outs)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("cell", CELLS)
def test_onnx_streaming_equals_torch_offline(exported, cell: str, head: str) -> None:
    model, path = exported(cell, head)
    backend = OnnxBackend(path, threads=1)
    want = offline(model, SIGNAL)
    assert want.shape[0] == SIGNAL.size // HOP

    @settings(max_examples=4, deadline=None, derandomize=True)
    @given(cuts=cuts_strategy)
    def check(cuts: list[int]) -> None:
        got = stream(backend, SIGNAL, cuts)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)

    check()


@pytest.mark.parametrize("cell,head", [("gru", "tag"), ("lstm", "classify_mean"), ("rnn_tanh", "forecast"),
                                       ("gru", "generate"), ("lstm", "classify_last")])
def test_raw_audio_graph_streaming_equals_featurizer_plus_model(exported, cell: str, head: str) -> None:
    model, path = exported(cell, head, raw_audio=True)
    backend = OnnxBackend(path, threads=1)
    assert backend.info.input_kind == "audio"
    want = offline(model, SIGNAL)

    @settings(max_examples=5, deadline=None, derandomize=True)
    @given(cuts=cuts_strategy)
    def check(cuts: list[int]) -> None:
        got = stream(backend, SIGNAL, cuts)  # chunk lengths not multiples of the hop: the session holds the rest
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)

    check()


@settings(max_examples=4, deadline=None, derandomize=True)
@given(data=st.data())
@pytest.mark.parametrize("raw_audio", [False, True])
def test_step_streams_batching_equals_per_stream(exported, raw_audio: bool, data: st.DataObject) -> None:
    _, path = exported("lstm", "classify_mean", raw_audio=raw_audio)
    backend = OnnxBackend(path, threads=1)
    signals = [noise(0.25, seed=s) for s in range(4)]
    # Per-step chunk sizes; several streams share a size so they batch, others do not.
    sizes = data.draw(st.lists(st.lists(st.sampled_from([0, 37, 80, 160, 333]), min_size=4, max_size=4),
                               min_size=3, max_size=5))
    batched = [StreamSession(backend, sample_rate=RATE, stream_id=str(i)) for i in range(4)]
    single = [StreamSession(backend, sample_rate=RATE, stream_id=str(i)) for i in range(4)]
    pos = [0] * 4
    for step in sizes:
        chunks = []
        for i, n in enumerate(step):
            chunks.append(signals[i][pos[i] : pos[i] + n])
            pos[i] += n
        got = step_streams(batched, chunks)
        want = [s.push(c) for s, c in zip(single, chunks)]
        for g, w in zip(got, want):
            assert g.outputs.shape == w.outputs.shape
            np.testing.assert_allclose(g.outputs, w.outputs, rtol=0, atol=1e-5)
            assert (g.prediction is None) == (w.prediction is None)
    for b, s in zip(batched, single):
        for k in s.states:
            np.testing.assert_allclose(b.states[k], s.states[k], rtol=0, atol=1e-5)


@pytest.mark.parametrize("head", ["classify_last", "classify_mean", "tag", "forecast", "generate"])
def test_whole_sequence_mode_equals_streaming(exported, head: str) -> None:
    model, path = exported("gru", head)
    backend = OnnxBackend(path, threads=1)
    _, raw_path = exported("gru", head, raw_audio=True)
    raw = OnnxBackend(raw_path, threads=1)
    feats = AudioFeaturizer(FC).featurize(SIGNAL)
    whole = predict_features(backend, feats)
    whole_raw = predict_signal(raw, SIGNAL, sample_rate=RATE)
    session = StreamSession(backend, sample_rate=RATE)
    for chunk in np.array_split(SIGNAL, 9):
        session.push(chunk)
    streamed = session.final()
    want = offline(model, SIGNAL)[-1]
    for p in (whole, whole_raw, streamed):
        assert p is not None and p.frames == feats.shape[0]
        assert p.label == streamed.label or head in ("forecast", "generate")
        np.testing.assert_allclose(p.values, streamed.values, rtol=0, atol=TOL)
    if head in ("forecast", "generate"):
        np.testing.assert_allclose(streamed.values, want, rtol=0, atol=TOL)
    else:
        assert whole.label == labels_for(head)[int(np.argmax(want))]


def test_onnx_backend_step_equals_torch_backend_step(exported) -> None:
    """Same batch, same random states: the two backends agree output for output, state for state."""
    model, path = exported("lstm", "classify_mean")
    onnx_b = OnnxBackend(path, threads=1)
    torch_b = TorchBackend(model, FC, labels_for("classify_mean"))
    assert onnx_b.info == torch_b.info
    rng = np.random.default_rng(0)
    x = rng.normal(-4, 2, (3, 11, FC.dim)).astype(np.float32)
    states = {s.name: rng.normal(0, 0.5, (3, *s.shape)).astype(np.float32) for s in onnx_b.info.state_specs}
    states["pool_count"] = np.full((3, 1), 7.0, np.float32)
    yo, so = onnx_b.step(x, dict(states))
    yt, stt = torch_b.step(x, dict(states))
    np.testing.assert_allclose(yo, yt, rtol=0, atol=TOL)
    assert set(so) == set(stt)
    for k in so:
        np.testing.assert_allclose(so[k], stt[k], rtol=0, atol=TOL)

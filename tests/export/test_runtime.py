"""OnnxBackend: input checks, bad files, providers, snapshots across backends, load_backend."""

from __future__ import annotations

import pickle

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from rnnstream.api import load_backend
from rnnstream.pipeline.onnx_backend import OnnxBackend
from rnnstream.models.backend import TorchBackend
from rnnstream.models.checkpoint import save_checkpoint
from rnnstream.pipeline.errors import CheckpointError, ConfigError, ShapeError, StateError
from rnnstream.pipeline.streaming import StreamSession
from tests.export.conftest import DIM, FC, HOP, LABELS, RATE, make_model, noise


@pytest.fixture(scope="module")
def gru(exported) -> OnnxBackend:
    return OnnxBackend(exported("gru", "classify_last")[1], threads=1)


@pytest.fixture(scope="module")
def raw(exported) -> OnnxBackend:
    return OnnxBackend(exported("lstm", "classify_mean", raw_audio=True)[1], threads=1)


def _x(batch: int = 2, frames: int = 5, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(0).normal(-4, 2, (batch, frames, dim)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------


def test_wrong_feature_dimension(gru: OnnxBackend) -> None:
    with pytest.raises(ShapeError, match=r"expected features \[batch, time, 8\], got shape \[2, 5, 13\]"):
        gru.step(_x(dim=13), gru.info.initial_states(2))
    with pytest.raises(ShapeError, match=r"got shape \[5, 8\]"):
        gru.step(_x()[0], gru.info.initial_states(1))


@pytest.mark.parametrize("dtype", [np.int16, np.int64, np.bool_, np.complex64])
def test_non_float_input_refused_naming_dtype(gru: OnnxBackend, dtype: type) -> None:
    with pytest.raises(ShapeError, match=f"input has dtype {np.dtype(dtype)}; expected float32"):
        gru.step(_x().astype(dtype), gru.info.initial_states(2))


def test_float64_input_converted_explicitly(gru: OnnxBackend) -> None:
    x = _x()
    y32, s32 = gru.step(x, gru.info.initial_states(2))
    y64, s64 = gru.step(x.astype(np.float64), {k: v.astype(np.float64) for k, v in gru.info.initial_states(2).items()})
    assert y64.dtype == np.float32 and s64["h"].dtype == np.float32
    np.testing.assert_array_equal(y64, y32)
    np.testing.assert_array_equal(s64["h"], s32["h"])


def test_state_of_wrong_shape_names_expected_shape(gru: OnnxBackend) -> None:
    states = gru.info.initial_states(2)
    states["h"] = np.zeros((2, 1, 12), np.float32)
    with pytest.raises(StateError, match=r"state 'h' has shape \[2, 1, 12\], expected \[2, 2, 12\]"):
        gru.step(_x(), states)
    with pytest.raises(StateError, match=r"expected \[2, 2, 12\]"):  # batch 1 states for a batch-2 input
        gru.step(_x(), gru.info.initial_states(1))
    with pytest.raises(StateError, match=r"states \[\] do not match this model's \['h'\]"):
        gru.step(_x(), {})
    with pytest.raises(StateError, match=r"states \['c', 'h'\]"):
        gru.step(_x(), {**gru.info.initial_states(2), "c": np.zeros((2, 2, 12), np.float32)})


def test_raw_audio_input_checks(raw: OnnxBackend) -> None:
    states = {**raw.info.initial_states(2), "frontend_carry": np.zeros((2, 120), np.float32)}
    with pytest.raises(ShapeError, match=r"multiple of the hop x stack \(80\) samples, got 100"):
        raw.step(np.zeros((2, 100), np.float32), states)
    with pytest.raises(ShapeError, match=r"audio \[batch, samples\], got shape \[2, 1, 80\]"):
        raw.step(np.zeros((2, 1, 80), np.float32), states)
    with pytest.raises(StateError, match=r"'frontend_carry'"):
        raw.step(np.zeros((2, 80), np.float32), raw.info.initial_states(2))
    bad = {**states, "frontend_carry": np.zeros((2, 80), np.float32)}
    with pytest.raises(StateError, match=r"state 'frontend_carry' has shape \[2, 80\], expected \[2, 120\]"):
        raw.step(np.zeros((2, 80), np.float32), bad)


def test_empty_chunk_returns_states_unchanged(gru: OnnxBackend, raw: OnnxBackend) -> None:
    rng = np.random.default_rng(1)
    states = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in gru.info.initial_states(3).items()}
    y, new = gru.step(np.zeros((3, 0, DIM), np.float32), states)
    assert y.shape == (3, 0, 3)
    np.testing.assert_array_equal(new["h"], states["h"])
    carry = rng.normal(size=(1, 120)).astype(np.float32)
    y, new = raw.step(np.zeros((1, 0), np.float32), {**raw.info.initial_states(1), "frontend_carry": carry})
    assert y.shape == (1, 0, 3)
    np.testing.assert_array_equal(new["frontend_carry"], carry)


# ----------------------------------------------------------------------------------------------
# Bad files
# ----------------------------------------------------------------------------------------------


def test_missing_truncated_and_corrupt_files(exported, tmp_path) -> None:
    _, path = exported("gru", "tag")
    data = open(path, "rb").read()
    with pytest.raises(CheckpointError, match="does not exist"):
        OnnxBackend(tmp_path / "nope.onnx")
    for name, blob in [("truncated.onnx", data[: len(data) // 2]), ("garbage.onnx", b"\x00\xff" * 300),
                       ("text.onnx", b"hello, I am not a graph\n"), ("empty.onnx", b"")]:
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(CheckpointError, match=f"{name}.* is truncated, corrupt or not an ONNX graph"):
            OnnxBackend(p)
        with pytest.raises(CheckpointError, match=name):
            load_backend(p)


def test_onnx_without_rnnstream_metadata(exported, tmp_path) -> None:
    _, path = exported("gru", "tag")
    m = onnx.load(path)
    del m.metadata_props[:]
    onnx.save(m, tmp_path / "foreign.onnx")
    with pytest.raises(CheckpointError, match=r"foreign.onnx.* has no rnnstream metadata.*rnnstream.feature_config"):
        OnnxBackend(tmp_path / "foreign.onnx")


def test_metadata_that_disagrees_with_the_graph(exported, tmp_path) -> None:
    """Metadata of an LSTM on a GRU graph: the state inputs differ, so the file is refused."""
    _, gru_path = exported("gru", "tag")
    _, lstm_path = exported("lstm", "tag")
    m = onnx.load(gru_path)
    lstm_meta = {p.key: p.value for p in onnx.load(lstm_path).metadata_props}
    del m.metadata_props[:]
    onnx.helper.set_model_props(m, lstm_meta)
    onnx.save(m, tmp_path / "mixed.onnx")
    with pytest.raises(CheckpointError, match=r"mixed.onnx.*graph inputs \['features', 'h_in'\].*\['features', 'h_in', 'c_in'\]"):
        OnnxBackend(tmp_path / "mixed.onnx")


# ----------------------------------------------------------------------------------------------
# Providers and threads
# ----------------------------------------------------------------------------------------------


def test_providers_and_threads(exported) -> None:
    _, path = exported("gru", "tag")
    auto = OnnxBackend(path)
    cuda_available = "CUDAExecutionProvider" in ort.get_available_providers()
    assert auto.provider == ("CUDAExecutionProvider" if cuda_available else "CPUExecutionProvider")
    assert auto.session.get_providers()[0] == auto.provider
    cpu = OnnxBackend(path, provider="cpu", threads=2, inter_threads=1)
    assert cpu.session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        OnnxBackend(path, threads=0)
    with pytest.raises(ConfigError, match="provider must be 'auto', 'cpu' or 'cuda', got 'tpu'"):
        OnnxBackend(path, provider="tpu")
    if not cuda_available:
        with pytest.raises(ConfigError, match="provider 'cuda' asked for, but this onnxruntime offers only"):
            OnnxBackend(path, provider="cuda")


def test_io_binding_path_equals_plain_run(exported) -> None:
    _, path = exported("lstm", "classify_mean")
    plain, bound = OnnxBackend(path, io_binding=False), OnnxBackend(path, io_binding=True)
    x = _x(3, 7)
    ya, sa = plain.step(x, plain.info.initial_states(3))
    yb, sb = bound.step(x, bound.info.initial_states(3))
    np.testing.assert_array_equal(ya, yb)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])


# ----------------------------------------------------------------------------------------------
# Snapshots across backends and models
# ----------------------------------------------------------------------------------------------


def _continue(session: StreamSession, chunks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([session.push(c).outputs for c in chunks])


def test_snapshot_moves_between_torch_onnx_and_raw_graphs(exported) -> None:
    model, path = exported("lstm", "classify_mean")
    _, raw_path = exported("lstm", "classify_mean", raw_audio=True)
    backends = [TorchBackend(model, FC, LABELS), OnnxBackend(path), OnnxBackend(raw_path),
                TorchBackend(model, FC, LABELS, raw_audio=True)]
    sig = noise(0.6, seed=5)
    first, rest = sig[:1234], np.array_split(sig[1234:], 3)
    ref = StreamSession(backends[0], sample_rate=RATE)
    ref.push(first)
    want = _continue(ref, rest)
    for src in backends:
        s = StreamSession(src, sample_rate=RATE, stream_id="mic-1")
        s.push(first)
        blob = s.snapshot()
        for dst in backends:
            restored = StreamSession.restore(dst, blob)
            assert restored.stream_id == "mic-1" and restored.samples_seen == 1234
            np.testing.assert_allclose(_continue(restored, rest), want, rtol=0, atol=1e-4)


def test_snapshot_from_another_model_refused(exported) -> None:
    _, gru_path = exported("gru", "classify_last")
    other = make_model("gru", "classify_last", seed=1)  # same architecture, other weights
    s = StreamSession(TorchBackend(other, FC, LABELS), sample_rate=RATE)
    s.push(noise(0.1))
    with pytest.raises(StateError, match=r"snapshot belongs to model .* not to this model .* refusing to restore"):
        StreamSession.restore(OnnxBackend(gru_path), s.snapshot())


# ----------------------------------------------------------------------------------------------
# load_backend
# ----------------------------------------------------------------------------------------------


def test_load_backend_dispatches_on_the_file(exported, tmp_path) -> None:
    model, path = exported("gru", "tag")
    _, raw_path = exported("gru", "tag", raw_audio=True)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(str(ckpt), model, FC, labels=list(LABELS))
    onnx_b, torch_b = load_backend(path, threads=1), load_backend(ckpt, provider="cpu")
    raw_torch = load_backend(ckpt, raw_audio=True, provider="cpu")
    assert isinstance(onnx_b, OnnxBackend) and isinstance(torch_b, TorchBackend)
    assert onnx_b.info == torch_b.info and raw_torch.info.input_kind == "audio"
    assert load_backend(raw_path, raw_audio=True).info.input_kind == "audio"
    with pytest.raises(ConfigError, match="is a features graph; export it with --raw-audio"):
        load_backend(path, raw_audio=True)
    sig = noise(0.3, seed=2)
    preds = []
    for b in (onnx_b, torch_b, raw_torch, load_backend(raw_path)):
        s = StreamSession(b, sample_rate=RATE)
        for c in np.array_split(sig, 4):
            s.push(c)
        preds.append(s.final())
    for p in preds[1:]:
        assert p.label == preds[0].label and p.frames == sig.size // HOP
        np.testing.assert_allclose(p.values, preds[0].values, atol=1e-5)


def test_onnx_backend_pickles_as_path_and_options(exported) -> None:
    """Beam ships DoFns pickled: the backend travels as its path and options and rebuilds its session."""
    _, path = exported("gru", "tag")
    b = OnnxBackend(path, provider="cpu", threads=1, io_binding=True)
    c = pickle.loads(pickle.dumps(b))
    assert c.info == b.info and c.io_binding and c.session is not b.session
    x = _x()
    np.testing.assert_array_equal(c.step(x, c.info.initial_states(2))[0], b.step(x, b.info.initial_states(2))[0])

"""The raw-audio front end (``AudioFrontend``): its matrices, its features in PyTorch and onnxruntime under any
chunking and batch, and what it exports to.

Tolerances: onnxruntime vs PyTorch ``1e-5 + 1e-5 * |value|`` (log-mels reach about 10 and float32 power sums of
low-energy bins lose about 1e-6 relative; measured up to 1.4e-5 absolute at a value of 2.8); both vs the NumPy
featurizer ``5e-5`` absolute (its float32 FFT is itself about 1.3e-5 off float64).
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnstream.export.onnx_export import OPSET
from rnnstream.models.frontend import AudioFrontend, folded_basis, spectral_basis
from rnnstream.pipeline.config import AudioConfig, FeatureConfig
from rnnstream.pipeline.features import AudioFeaturizer, mel_matrix, window
from tests.export.conftest import FC, make_model, noise

CONFIGS = {
    "16k-logmel": AudioConfig(),  # win == n_fft: folded DFT
    "8k-8mels": FC.audio,
    "nfft512-mfcc": AudioConfig(n_fft=512, feature="mfcc"),  # zero-padded frames: plain DFT
    "band-hamming": AudioConfig(win_ms=20, hop_ms=10, f_min=300.0, f_max=3000.0, n_mels=20, window="hamming"),
    "win-eq-hop": AudioConfig(win_ms=10, hop_ms=10, n_mels=40),  # one block per frame
    "odd-nfft": AudioConfig(sample_rate=8000, n_fft=201, n_mels=16),  # no Nyquist bin
    "8k-stack3": AudioConfig(sample_rate=8000, n_mels=8, stack=3),  # low frame rate: 3 frames per model frame
}
TORCH_VS_ORT = 1e-5
VS_NUMPY = 5e-5


def _power_mel_reference(cfg: AudioConfig, frames: np.ndarray) -> np.ndarray:
    """float64 ``|rfft(window * frame, n_fft)|^2 @ mel``: ``frames [N, win] -> [N, n_mels]``."""
    spec = np.fft.rfft(frames * window(cfg).astype(np.float64), n=cfg.fft_size, axis=1)
    return (np.abs(spec) ** 2) @ mel_matrix(cfg).astype(np.float64)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bases_give_the_mel_power_spectrum(name: str) -> None:
    cfg = CONFIGS[name]
    frames = np.random.default_rng(1).standard_normal((6, cfg.win_length))
    want = _power_mel_reference(cfg, frames)
    cos, sin, mel = spectral_basis(cfg)
    used = int(np.any(mel_matrix(cfg) != 0, axis=1).sum())
    assert cos.shape == sin.shape == (cfg.win_length, used) and mel.shape == (used, cfg.n_mels)  # used bins only
    got = ((frames @ cos) ** 2 + (frames @ sin) ** 2) @ mel
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
    folded = folded_basis(cfg)
    assert (folded is not None) == (cfg.win_length == cfg.fft_size and cfg.fft_size % 2 == 0)
    if folded is not None:
        cos_f, sin_f, mel_f = folded
        half = cfg.fft_size // 2
        a, b = frames[:, 1 : half + 1], frames[:, half:][:, ::-1]
        re, im = np.concatenate([frames[:, :1], a + b], axis=1) @ cos_f, (a - b)[:, : half - 1] @ sin_f
        np.testing.assert_allclose((re**2 + im**2) @ mel_f, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())


def _export_frontend(cfg: AudioConfig, path: str) -> ort.InferenceSession:
    """The front end alone, traced as ``export_onnx`` traces the raw-audio graph (dynamic batch and length)."""
    module = AudioFrontend(cfg).eval()
    example = (torch.zeros(2, 3 * cfg.step_length), torch.zeros(2, cfg.context))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, path, input_names=["audio", "carry_in"], output_names=["features", "carry_out"],
                          dynamic_axes={"audio": {0: "batch", 1: "samples"}, "carry_in": {0: "batch"},
                                        "features": {0: "batch", 1: "time"}, "carry_out": {0: "batch"}},
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def frontends(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[AudioFrontend, ort.InferenceSession]]:
    root = tmp_path_factory.mktemp("frontend")
    return {name: (AudioFrontend(cfg).eval(), _export_frontend(cfg, str(root / f"{name}.onnx")))
            for name, cfg in CONFIGS.items()}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@settings(max_examples=6, deadline=None, derandomize=True)
@given(hops=st.lists(st.integers(0, 13), min_size=1, max_size=6))
def test_onnx_and_torch_frontends_stream_the_numpy_features(frontends, name: str, hops: list[int]) -> None:
    """Two streams in one batch, fed in chunks of ``hops`` model frames (0 included), equal the NumPy featurizer
    offline."""
    cfg = CONFIGS[name]
    module, session = frontends[name]
    hop, total = cfg.step_length, sum(hops)
    signals = np.stack([noise(total * hop / 8000 + 1, seed=s)[: total * hop] for s in (4, 5)])
    want = np.stack([AudioFeaturizer(FeatureConfig(kind="audio", audio=cfg)).featurize(x) for x in signals])
    carry_ort = carry_torch = np.zeros((2, cfg.context), np.float32)
    got_ort, got_torch, start = [], [], 0
    for n in hops:
        chunk = signals[:, start : start + n * hop]
        start += n * hop
        feats, carry_ort = session.run(None, {"audio": chunk, "carry_in": carry_ort})
        with torch.no_grad():
            f, c = module(torch.from_numpy(chunk), torch.from_numpy(carry_torch))
        carry_torch = c.numpy()
        assert feats.shape == (2, n, cfg.dim) and f.shape == (2, n, cfg.dim)
        got_ort.append(feats)
        got_torch.append(f.numpy())
    np.testing.assert_allclose(np.concatenate(got_ort, 1), np.concatenate(got_torch, 1), rtol=TORCH_VS_ORT,
                               atol=TORCH_VS_ORT)
    np.testing.assert_allclose(np.concatenate(got_ort, 1), want, rtol=0, atol=VS_NUMPY)
    np.testing.assert_array_equal(carry_ort, signals[:, total * hop - cfg.context :] if total * hop >= cfg.context
                                  else np.concatenate([np.zeros((2, cfg.context - total * hop), np.float32), signals], 1))


def test_raw_audio_graph_front_end_has_no_conv_and_half_the_dft(exported) -> None:
    """The exported front end: MatMuls with folded bases (about half the multiply-adds of a full
    ``[2 * (n_fft // 2 + 1), win]`` DFT), no Conv; batch and length axes stay dynamic."""
    _, path = exported("gru", "tag", raw_audio=True)
    graph = onnx.load(path).graph
    frontend = [n for n in graph.node if n.name.startswith("/frontend/")]
    assert frontend and not any(n.op_type == "Conv" for n in frontend)
    consts = {i.name: tuple(i.dims) for i in graph.initializer}
    consts.update({n.output[0]: tuple(n.attribute[0].t.dims) for n in graph.node
                   if n.op_type == "Constant" and n.attribute[0].name == "value"})
    cfg = FC.audio
    weights = [consts[n.input[1]] for n in frontend if n.op_type == "MatMul" and n.input[1] in consts]
    dft = [w for w in weights if len(w) == 2 and w[1] != cfg.n_mels]  # the mel projection ends in n_mels
    full = 2 * (cfg.fft_size // 2 + 1) * cfg.win_length
    assert dft and sum(a * b for a, b in dft) <= 0.55 * full
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input}
    assert dims["audio"] == ["batch", "samples"] and dims["frontend_carry_in"][0] == "batch"


@pytest.mark.parametrize("name", ["16k-logmel", "8k-stack3", "win-eq-hop"])
def test_optimised_front_end_graph_computes_no_shapes(tmp_path, name: str) -> None:
    """After onnxruntime's graph optimisations the front end holds no shape arithmetic (``Shape``, ``Gather``,
    ``Div``...): every reshape became a constant ``[0, -1, hop]`` and every slice bound is a constant."""
    _export_frontend(CONFIGS[name], str(tmp_path / "fe.onnx"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "fe_opt.onnx")
    ort.InferenceSession(str(tmp_path / "fe.onnx"), sess_options=opts, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "fe_opt.onnx")).graph.node}
    assert not ops & {"Shape", "Gather", "Div", "Unsqueeze", "Cast"}, sorted(ops)


def test_torch_backend_raw_audio_equals_features_path() -> None:
    """``TorchBackend(raw_audio=True)`` (the front end in PyTorch) equals the featurizer + model path."""
    from rnnstream.models.backend import TorchBackend
    from rnnstream.pipeline.streaming import StreamSession

    model = make_model("gru", "tag")
    signal = noise(0.5, seed=9)
    labels = ("yes", "no", "maybe")
    raw, feat = (StreamSession(TorchBackend(model, FC, labels, raw_audio=r), sample_rate=8000) for r in (True, False))
    for a, b in ((0, 333), (333, 340), (340, signal.size)):
        got, want = raw.push(signal[a:b]).outputs, feat.push(signal[a:b]).outputs
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)

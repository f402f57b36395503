"""The streaming audio featurizer: streaming equals offline, torchaudio references, the torch frontend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnstream.pipeline.config import AudioConfig, FeatureConfig
from rnnstream.pipeline.errors import NonFiniteSamplesError, ShapeError, StateError
from rnnstream.models.frontend import AudioFrontend
from rnnstream.pipeline.features import AudioFeaturizer

CONFIGS = {
    "logmel": AudioConfig(),
    "logmel_8k_hamming": AudioConfig(sample_rate=8000, n_mels=40, window="hamming", f_min=20.0, f_max=3800.0),
    "mfcc": AudioConfig(feature="mfcc", n_mfcc=13, n_mels=40),
    "mfcc_nfft_gt_win": AudioConfig(feature="mfcc", n_fft=512, n_mels=64, n_mfcc=20),
    "logmel_nfft_gt_win": AudioConfig(n_fft=512, n_mels=64),
    # low frame rate: 3 (2) analysis frames side by side per model frame
    "logmel_stack3": AudioConfig(n_mels=40, stack=3),
    "mfcc_8k_stack2": AudioConfig(sample_rate=8000, feature="mfcc", n_mfcc=13, n_mels=40, stack=2),
}


def _signal(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t)
    return (tone + rng.normal(0, 0.05, n)).astype(np.float32)


def _stream(fz: AudioFeaturizer, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    carry = fz.initial_state()
    out, pos = [], 0
    for size in sizes:
        feats, carry = fz.step(x[pos : pos + size], carry)
        assert feats.shape[1] == fz.dim and feats.dtype == np.float32
        out.append(feats)
        pos += size
    feats, carry = fz.step(x[pos:], carry)
    out.append(feats)
    return np.concatenate(out)


@settings(max_examples=80, deadline=None)
@given(
    name=st.sampled_from(sorted(CONFIGS)),
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(0, 5000),
    sizes=st.lists(st.one_of(st.just(0), st.just(1), st.integers(0, 1200)), max_size=25),
)
def test_streaming_equals_offline_over_random_chunkings(name, seed, n, sizes):
    fz = AudioFeaturizer(CONFIGS[name])
    x = _signal(seed, n)
    offline = fz.featurize(x)
    assert offline.shape == (n // fz.cfg.step_length, fz.dim)
    streamed = _stream(fz, x, sizes)
    assert streamed.shape == offline.shape
    np.testing.assert_allclose(streamed, offline, atol=1e-5, rtol=0)


def _torchaudio_logmel(cfg: AudioConfig, x: np.ndarray) -> np.ndarray:
    pad = cfg.fft_size - cfg.win_length
    left = cfg.context + pad // 2
    padded = np.concatenate([np.zeros(left, np.float32), x, np.zeros(pad - pad // 2, np.float32)])
    kwargs = dict(
        n_fft=cfg.fft_size, win_length=cfg.win_length, hop_length=cfg.hop_length, center=False, power=2.0,
        n_mels=cfg.n_mels, f_min=cfg.f_min, f_max=cfg.f_max, mel_scale="htk", norm=None,
        window_fn=torch.hann_window if cfg.window == "hann" else torch.hamming_window,
    )
    if cfg.feature == "logmel":
        mel = torchaudio.transforms.MelSpectrogram(sample_rate=cfg.sample_rate, **kwargs)(torch.from_numpy(padded))
        return torch.log(mel + cfg.log_eps).T.numpy()
    mfcc = torchaudio.transforms.MFCC(
        sample_rate=cfg.sample_rate, n_mfcc=cfg.n_mfcc, dct_type=2, norm="ortho", log_mels=True, melkwargs=kwargs
    )
    return mfcc(torch.from_numpy(padded)).T.numpy()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_offline_equals_torchaudio_reference(name):
    """Log-mel/MFCC equal torchaudio's MelSpectrogram/MFCC on the causally padded signal.

    Measured max abs difference on this signal: up to 2.1e-5 for log-mel, 4.8e-6 for MFCC (both sides use
    float32 FFTs; against a float64 reference ours is within 1.3e-5, torchaudio within 2.8e-5); asserted: 1e-4.
    """
    cfg = CONFIGS[name]
    x = _signal(7, 8000 + 37)
    ours = AudioFeaturizer(cfg).featurize(x)
    ref = _torchaudio_logmel(cfg, x)
    assert ref.shape == (len(x) // cfg.hop_length, cfg.frame_dim)
    ref = ref[: ours.shape[0] * cfg.stack].reshape(ours.shape[0], cfg.dim)  # stacked: frames side by side
    assert ours.shape == ref.shape == (len(x) // cfg.step_length, cfg.dim)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_torch_frontend_equals_numpy_featurizer(name):
    """Measured max abs difference up to 6.6e-5 (log-mel, 16 kHz: conv1d DFT in float32); asserted: 1e-4."""
    cfg = CONFIGS[name]
    fz, frontend = AudioFeaturizer(cfg), AudioFrontend(cfg)
    hop = cfg.step_length  # the graph takes whole model frames
    x = _signal(3, hop * 57)
    expected = fz.featurize(x)
    carry = frontend.initial_state(1)
    outs = []
    # (an empty chunk is not fed: conv1d needs at least one window of input)
    for a, b in [(0, hop), (hop, hop * 11), (hop * 11, hop * 12), (hop * 12, hop * 57)]:
        with torch.no_grad():
            feats, carry = frontend(torch.from_numpy(x[a:b])[None], carry)
        outs.append(feats[0].numpy())
    got = np.concatenate(outs)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    # the graph's carry is the context part of the numpy carry
    np.testing.assert_array_equal(carry[0].numpy(), fz.step(x, fz.initial_state())[1][: cfg.context])


def test_stacked_frames_are_the_analysis_frames_side_by_side():
    """stack=3: one model frame per 3 hops, the 3 analysis frames' features concatenated (oldest first); the
    pending tail (< 3 hops) waits in the carry."""
    plain, stacked = AudioFeaturizer(AudioConfig(n_mels=40)), AudioFeaturizer(AudioConfig(n_mels=40, stack=3))
    x = _signal(11, 160 * 3 * 7 + 160 * 2 + 5)  # 7 model frames, 2 hops and 5 samples pending
    frames = plain.featurize(x)
    feats, carry = stacked.step(x, stacked.initial_state())
    assert frames.shape == (23, 40) and feats.shape == (7, 120)
    np.testing.assert_array_equal(feats, frames[:21].reshape(7, 120))
    assert carry.shape == (stacked.cfg.context + 2 * 160 + 5,)
    more, _ = stacked.step(np.zeros(160 - 5, np.float32), carry)  # completes the 8th model frame
    assert more.shape == (1, 120)


def test_frame_count_and_carry_shape():
    cfg = AudioConfig()
    fz = AudioFeaturizer(FeatureConfig(kind="audio", audio=cfg))
    feats, carry = fz.step(np.zeros(cfg.hop_length * 3 + 7, np.float32), fz.initial_state())
    assert feats.shape == (3, cfg.n_mels)
    assert carry.shape == (cfg.context + 7,) and carry.dtype == np.float32


def test_bad_chunks_and_carries_raise_typed_errors():
    fz = AudioFeaturizer(AudioConfig())
    with pytest.raises(ShapeError, match=r"shape \[2, 3\]"):
        fz.step(np.zeros((2, 3), np.float32), fz.initial_state())
    with pytest.raises(NonFiniteSamplesError, match="1 of 5 samples"):
        fz.step(np.array([0, 0, np.nan, 0, 0], np.float32), fz.initial_state())
    with pytest.raises(NonFiniteSamplesError):
        fz.step(np.array([np.inf], np.float32), fz.initial_state())
    with pytest.raises(StateError, match="float32"):
        fz.step(np.zeros(10, np.float32), np.zeros(3, np.float64))


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(CONFIGS)),
    seed=st.integers(0, 2**31 - 1),
    pending=st.sampled_from([0, 0, 7]),
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    data=st.data(),
)
def test_non_finite_samples_are_refused_in_every_streaming_path(name, seed, pending, bad, data):
    """Hop-sized chunks after a full context take the one-frame fast path, which checks its output
    instead of the input; a NaN/Inf anywhere in the chunk must still raise (and nothing else must)."""
    fz = AudioFeaturizer(CONFIGS[name])
    hop = fz.cfg.hop_length
    rng = np.random.default_rng(seed)
    _, carry = fz.step(rng.normal(0, 0.1, hop * 3 + pending).astype(np.float32), fz.initial_state())
    chunk = rng.normal(0, 0.1, hop).astype(np.float32)
    fz.step(chunk, carry)  # finite: fine
    chunk[data.draw(st.integers(0, hop - 1))] = bad
    with pytest.raises(NonFiniteSamplesError, match=f"1 of {hop} samples are NaN or Inf"):
        with np.errstate(all="ignore"):
            fz.step(chunk, carry)


@pytest.mark.parametrize("sample_rate,n_fft,n_mels,f_min,f_max", [
    (16000, None, 64, 0.0, None), (8000, 256, 40, 20.0, 3800.0), (22050, 1024, 64, 0.0, 8000.0),
    (16000, 512, 13, 125.0, 7600.0),
])
def test_numpy_matrices_equal_torchaudio(sample_rate, n_fft, n_mels, f_min, f_max):
    """The runtime's NumPy filterbank, DCT and windows equal torchaudio's/torch's (the runtime imports neither)."""
    import torchaudio.functional as AF

    from rnnstream.pipeline.features import dct_matrix, mel_matrix, window

    cfg = AudioConfig(sample_rate=sample_rate, win_ms=20.0, hop_ms=10.0, n_fft=n_fft, n_mels=n_mels,
                      f_min=f_min, f_max=f_max, feature="mfcc", n_mfcc=min(13, n_mels))
    ref = AF.melscale_fbanks(n_freqs=cfg.fft_size // 2 + 1, f_min=f_min, f_max=f_max or sample_rate / 2, n_mels=n_mels,
                             sample_rate=sample_rate, norm=None, mel_scale="htk").numpy()
    # torchaudio builds the triangles in float32 (differences up to ~5e-6 on weights <= 1); ours in float64.
    np.testing.assert_allclose(mel_matrix(cfg), ref, atol=1e-5)
    np.testing.assert_allclose(dct_matrix(cfg), AF.create_dct(cfg.n_mfcc, n_mels, norm="ortho").numpy(), atol=1e-6)
    for kind, fn in (("hann", torch.hann_window), ("hamming", torch.hamming_window)):
        wcfg = AudioConfig(sample_rate=sample_rate, win_ms=20.0, hop_ms=10.0, window=kind)
        ref_w = fn(wcfg.win_length, periodic=True, dtype=torch.float64).numpy()
        np.testing.assert_allclose(window(wcfg), ref_w, atol=1e-7)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@settings(max_examples=12, deadline=None, derandomize=True)
@given(batch=st.integers(1, 6), size=st.integers(0, 2000), pending=st.integers(0, 159), seed=st.integers(0, 99))
def test_step_batch_equals_step_per_stream(name, batch, size, pending, seed):
    """B streams with equal chunk and carry lengths featurized at once equal each stream stepped alone."""
    fz = AudioFeaturizer(CONFIGS[name])
    rng = np.random.default_rng(seed)
    carries = rng.normal(0, 0.1, (batch, fz.cfg.context + min(pending, fz.cfg.step_length - 1))).astype(np.float32)
    chunks = np.stack([_signal(seed + b, size) for b in range(batch)])
    feats, new = fz.step_batch(chunks, carries)
    for b in range(batch):
        want, want_carry = fz.step(chunks[b], carries[b])
        assert feats[b].shape == want.shape and feats.dtype == np.float32
        np.testing.assert_allclose(feats[b], want, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(new[b], want_carry)


def test_step_batch_refuses_bad_input_naming_it():
    fz = AudioFeaturizer(CONFIGS["logmel"])
    carries = np.zeros((2, fz.cfg.context), np.float32)
    chunks = np.zeros((2, 160), np.float32)
    chunks[1, 7] = np.nan
    with pytest.raises(NonFiniteSamplesError, match="NaN or Inf"):
        fz.step_batch(chunks, carries)
    with pytest.raises(ShapeError, match=r"float32 chunks \[B, S\].*float64 \[2, 160\]"):
        fz.step_batch(chunks.astype(np.float64), carries)
    with pytest.raises(ShapeError, match=r"carries \[B, >= 240\]"):
        fz.step_batch(chunks, carries[:, :10])

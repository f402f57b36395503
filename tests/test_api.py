"""The public API: ``rnnstream.load`` -> ``model.stream(sample_rate=...)`` -> ``push`` -> ``prediction``; ``predict``.

Every answer is checked against the offline path: a stream at another rate than the model's is resampled to the
same samples offline resampling gives, int16 and float32 give the same answer, a ``.pt`` checkpoint and its ONNX
export answer alike, and a snapshot taken mid-stream (resampler included) continues exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import rnnstream
from rnnstream.models.checkpoint import save_checkpoint
from rnnstream.models.rnn import rnn_classifier, rnn_forecaster
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.errors import ConfigError, SampleRateError, StateError

LABELS = ["yes", "no", "maybe"]
FC16 = FeatureConfig.audio_default(sample_rate=16000, n_mels=10)


def _signal(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
            + rng.normal(0, 0.03, t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, str]:
    """A 16 kHz classifier as ``.pt`` and features/raw-audio ``.onnx``."""
    from rnnstream.export.onnx_export import export_onnx

    torch.manual_seed(0)
    model = rnn_classifier(input_dim=FC16.dim, num_classes=3, hidden_size=16, num_layers=2, pooling="mean").eval()
    with torch.no_grad():
        model.feat_mean.fill_(-6.0)
        model.feat_std.fill_(3.0)
    root = tmp_path_factory.mktemp("api")
    save_checkpoint(str(root / "m.pt"), model, FC16, labels=LABELS)
    return {
        "pt": str(root / "m.pt"),
        "onnx": export_onnx(model, root / "m.onnx", FC16, LABELS),
        "raw": export_onnx(model, root / "raw.onnx", FC16, LABELS, raw_audio=True),
    }


def _stream(model: rnnstream.Model, x: np.ndarray, rate: int, cuts: list[int]) -> rnnstream.Prediction:
    stream = model.stream(sample_rate=rate)
    for part in np.split(x, cuts):
        stream.push(part)
    return stream.prediction


@pytest.mark.parametrize("kind", ["onnx", "raw", "pt"])
@pytest.mark.parametrize("rate", [8000, 16000, 44100])
def test_stream_at_any_rate_equals_offline_predict(model_files, kind, rate):
    model = rnnstream.load(model_files[kind], provider="cpu")
    assert model.sample_rate == 16000 and model.labels == LABELS and model.task == "classify"
    x = _signal(0.9, rate, seed=rate)
    offline = model.predict(x, sample_rate=rate)
    for cuts in ([], [1, 2, 3], [77, 1000, 5000], list(range(0, x.size, 997))):
        streamed = _stream(model, x, rate, cuts)
        assert streamed.label == offline.label in LABELS
        assert list(streamed.scores) == LABELS
        np.testing.assert_allclose(list(streamed.scores.values()), list(offline.scores.values()), rtol=0, atol=1e-5)


def test_checkpoint_and_onnx_give_the_same_answers(model_files, tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(str(path), _signal(1.1, 8000, seed=3), 8000, subtype="PCM_16")
    preds = [rnnstream.load(model_files[k], provider="cpu").predict(str(path)) for k in ("pt", "onnx", "raw")]
    for p in preds[1:]:
        assert p.label == preds[0].label and p.frames == preds[0].frames == 110
        np.testing.assert_allclose(p.values, preds[0].values, atol=1e-5)


def test_wav_file_prediction_equals_streaming_its_samples(model_files, tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(str(path), _signal(0.8, 8000, seed=4), 8000, subtype="PCM_16")
    model = rnnstream.load(model_files["onnx"], provider="cpu")
    pcm, rate = sf.read(str(path), dtype="int16")
    streamed = _stream(model, pcm, rate, [160, 3000])  # int16 chunks, scaled by 1/32768
    np.testing.assert_allclose(streamed.values, model.predict(str(path)).values, atol=1e-5)
    with pytest.raises(SampleRateError, match="8000 Hz, not the declared 16000 Hz"):
        model.predict(str(path), sample_rate=16000)


def test_int16_and_float32_samples_are_one_scale(model_files):
    model = rnnstream.load(model_files["onnx"], provider="cpu")
    x = _signal(0.5, 16000, seed=5)
    pcm = np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)
    a, b = model.predict(pcm, sample_rate=16000), model.predict(pcm.astype(np.float32) / 32768, sample_rate=16000)
    np.testing.assert_array_equal(a.values, b.values)
    with pytest.raises(rnnstream.RnnstreamError, match="int32"):
        model.stream(sample_rate=16000).push(pcm.astype(np.int32))


def test_sample_rate_is_never_implicit(model_files):
    model = rnnstream.load(model_files["onnx"], provider="cpu")
    with pytest.raises(ConfigError, match="must declare the sample rate.*16000 Hz"):
        model.stream()
    with pytest.raises(ConfigError, match="needs sample_rate"):
        model.predict(_signal(0.1, 16000))
    with pytest.raises(SampleRateError, match="8000 Hz differs from the model's 16000 Hz and resampling is off"):
        model.stream(sample_rate=8000, resample=False)
    with pytest.raises(ConfigError, match="positive integer"):
        model.stream(sample_rate=0)


def test_snapshot_mid_stream_continues_exactly_with_the_resampler(model_files):
    model = rnnstream.load(model_files["onnx"], provider="cpu")
    torch_model = rnnstream.load(model_files["pt"], provider="cpu")
    x = _signal(0.7, 8000, seed=6)
    whole = model.stream(sample_rate=8000)
    for part in np.split(x, [1234, 3000]):
        whole.push(part)
    first = model.stream(sample_rate=8000)
    first.push(x[:1234])
    blob = first.snapshot()
    with pytest.raises(StateError, match="8000 Hz, not at the declared 16000 Hz"):
        model.restore(blob, sample_rate=16000)
    resumed = torch_model.restore(blob, sample_rate=8000)  # moves between backends too
    for part in np.split(x[1234:], [3000 - 1234]):
        resumed.push(part)
    assert resumed.sample_rate == 8000
    np.testing.assert_allclose(resumed.prediction.values, whole.prediction.values, atol=1e-5)


def test_end_flushes_and_refuses_more(model_files):
    model = rnnstream.load(model_files["onnx"], provider="cpu")
    x = _signal(0.3, 8000, seed=7)
    with model.stream(sample_rate=8000) as stream:
        stream.push(x)
        before = stream.session.frames_seen
    assert stream.session.ended and stream.session.frames_seen >= before
    np.testing.assert_allclose(stream.prediction.values, model.predict(x, sample_rate=8000).values, atol=1e-5)
    with pytest.raises(StateError, match="has ended"):
        stream.push(x)


def test_forecast_and_sensor_models(tmp_path):
    from rnnstream.export.onnx_export import export_onnx

    torch.manual_seed(1)
    fc = FeatureConfig.sensor_default(["a", "b"], rate_hz=2.0)
    net = rnn_forecaster(input_dim=2, horizon=3, target_dims=(1,), hidden_size=8, num_layers=1).eval()
    model = rnnstream.load(export_onnx(net, tmp_path / "f.onnx", fc), provider="cpu")
    assert model.sample_rate is None and model.labels == []
    with pytest.raises(ConfigError, match="sensor model"):
        model.stream(sample_rate=100)
    ts = np.arange(40) / 2.0
    vals = np.stack([np.sin(ts), np.cos(ts)], axis=1).astype(np.float32)
    stream = model.stream()
    stream.push((ts[:13], vals[:13]))
    stream.push((ts[13:], vals[13:]))
    offline = model.predict((ts, vals))
    assert stream.prediction.forecast.shape == (3, 1) and stream.prediction.scores == {}
    np.testing.assert_allclose(stream.prediction.forecast, offline.forecast, atol=1e-5)
    assert offline.to_dict()["predicted"] == offline.label and "values" in offline.to_dict()


def test_public_names():
    assert {"load", "Model", "Stream", "Prediction", "StreamSession"} <= set(rnnstream.__all__)
    with pytest.raises(AttributeError):
        rnnstream.no_such_name  # noqa: B018


def _type_checking_reexports() -> dict[str, str]:
    """``name -> module`` of the ``from M import X as X`` lines under ``if TYPE_CHECKING:`` in rnnstream/__init__.py."""
    import ast

    tree = ast.parse(Path(rnnstream.__file__).read_text(encoding="utf-8"))
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", None) == "TYPE_CHECKING")
    out = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom), ast.dump(node)
        for alias in node.names:
            if alias.asname == alias.name:  # only ``X as X`` is an explicit re-export for type checkers
                out[alias.name] = node.module
    return out


def test_lazy_exports_are_explicit_reexports_for_type_checkers():
    """Every lazily resolved public name is also an explicit re-export for type checkers (PEP 484 ``X as X``; the
    package ships ``py.typed``), from the module it is resolved from, so ``mypy --strict`` sees ``rnnstream.load``."""
    assert _type_checking_reexports() == rnnstream._EXPORTS
    assert set(rnnstream.__all__) == set(rnnstream._EXPORTS) | {"__version__"}
    marker = Path(rnnstream.__file__).with_name("py.typed")
    assert marker.is_file(), f"{marker} missing: the package's annotations would be invisible to type checkers"

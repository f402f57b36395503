"""The exported graph: its signature, self-description, self-check, refusals, int8 and the command."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

import rnnstream.export.onnx_export as ox
from rnnstream.export.onnx_export import export_onnx, export_with_report
from rnnstream.export.quantize import compare_quantized
from rnnstream.pipeline.onnx_backend import OnnxBackend
from rnnstream.models.checkpoint import save_checkpoint
from rnnstream.models.rnn import rnn_classifier
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.errors import ConfigError, ExportError, ShapeError, StateError
from rnnstream.pipeline.features import AudioFeaturizer
from rnnstream.pipeline.model_info import ModelInfo
from rnnstream.pipeline.streaming import StreamSession
from rnnstream import cli
from tests.export.conftest import DIM, FC, LABELS, make_model, noise


def _dims(v: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]


@pytest.mark.parametrize("raw_audio", [False, True])
def test_graph_signature_and_metadata(exported, raw_audio: bool) -> None:
    model, path = exported("lstm", "classify_mean", raw_audio=raw_audio)
    m = onnx.load(path)
    ins = {v.name: _dims(v) for v in m.graph.input}
    outs = {v.name: _dims(v) for v in m.graph.output}
    h, ctx = model.config.hidden_size, FC.audio.context  # type: ignore[union-attr]
    states_in = {"h_in": ["batch", 2, h], "c_in": ["batch", 2, h], "pool_sum_in": ["batch", h],
                 "pool_count_in": ["batch", 1]}
    states_out = {k.replace("_in", "_out"): v for k, v in states_in.items()}
    if raw_audio:
        assert ins == {"audio": ["batch", "samples"], "frontend_carry_in": ["batch", ctx], **states_in}
        assert outs == {"output": ["batch", "time", 3], "frontend_carry_out": ["batch", ctx], **states_out}
    else:
        assert ins == {"features": ["batch", "time", DIM], **states_in}
        assert outs == {"output": ["batch", "time", 3], **states_out}
    assert [v.name for v in m.graph.input][1 if not raw_audio else 2:] == list(states_in)  # graph order
    meta = {p.key: p.value for p in m.metadata_props}
    info = ModelInfo.from_metadata(meta)
    assert info == ModelInfo.from_model(model, FC, LABELS, input_kind="audio" if raw_audio else "features")
    assert meta["rnnstream.task"] == "classify" and json.loads(meta["rnnstream.labels"]) == list(LABELS)
    assert meta["rnnstream.quantization"] == "none"
    assert info.weights_hash == model.weights_hash() and info.stats_hash == model.stats_hash()
    onnx.checker.check_model(m, full_check=True)


def test_export_from_checkpoint_uses_its_config_and_labels(tmp_path) -> None:
    model = make_model("gru", "tag")
    ckpt = tmp_path / "m.pt"
    save_checkpoint(str(ckpt), model, FC, labels=["speech", "noise", "music"])
    out = export_onnx(str(ckpt), tmp_path / "sub" / "m.onnx")
    backend = OnnxBackend(out)
    assert backend.info.labels == ("speech", "noise", "music")
    assert backend.info.feature_config == FC
    assert backend.info.weights_hash == model.weights_hash()


def test_bidirectional_model_refused_at_export(tmp_path) -> None:
    model = rnn_classifier(input_dim=DIM, num_classes=2, hidden_size=8, bidirectional=True)
    with pytest.raises(StateError, match="bidirectional models are offline only"):
        export_onnx(model, tmp_path / "bi.onnx", FC)
    assert not (tmp_path / "bi.onnx").exists()


def test_bad_export_arguments(tmp_path) -> None:
    model = make_model("gru", "tag")
    with pytest.raises(ShapeError, match="input_dim 8 != feature dimension 40"):
        export_onnx(model, tmp_path / "a.onnx", FeatureConfig.audio_default(sample_rate=8000, n_mels=40))
    sensor_fc = FeatureConfig.sensor_default([f"c{i}" for i in range(DIM)])
    with pytest.raises(ConfigError, match="raw_audio needs an audio feature config"):
        export_onnx(model, tmp_path / "b.onnx", sensor_fc, raw_audio=True)
    with pytest.raises(ConfigError, match="quantize must be None or 'int8', got 'int4'"):
        export_onnx(model, tmp_path / "c.onnx", FC, quantize="int4")
    with pytest.raises(ConfigError, match="needs the model's feature_config"):
        export_onnx(model, tmp_path / "d.onnx")


def test_sensor_features_graph_exports(tmp_path) -> None:
    """A sensor model exports as a features graph (its featurizer stays in Python)."""
    torch.manual_seed(1)
    sensor_fc = FeatureConfig.sensor_default(["a", "b", "c"], rate_hz=10.0)
    model = rnn_classifier(input_dim=3, num_classes=2, hidden_size=8, num_layers=1, cell="lstm").eval()
    backend = OnnxBackend(export_onnx(model, tmp_path / "s.onnx", sensor_fc, ["x", "y"]))
    x = np.random.default_rng(0).normal(size=(2, 9, 3)).astype(np.float32)
    y, _ = backend.step(x, backend.info.initial_states(2))
    np.testing.assert_allclose(y, model(torch.from_numpy(x)).detach().numpy(), rtol=0, atol=1e-5)


def test_self_check_fails_loudly_when_onnx_and_torch_differ(tmp_path, monkeypatch) -> None:
    """Perturb the PyTorch model after tracing: the check must name the difference and the tolerance."""
    model = make_model("gru", "classify_last")
    real_trace = ox._trace

    def trace_then_perturb(graph, info, path):
        real_trace(graph, info, path)
        with torch.no_grad():
            graph.model.head.bias.add_(0.01)

    monkeypatch.setattr(ox, "_trace", trace_then_perturb)
    with pytest.raises(ExportError, match=r"max \|onnx - torch\| = 0\.01.* > tolerance 0\.0001"):
        export_onnx(model, tmp_path / "bad.onnx", FC)
    assert not (tmp_path / "bad.onnx").exists()
    assert not [p for p in tmp_path.iterdir()]  # no temporary files left behind


def test_report_lists_checks_below_tolerance(tmp_path) -> None:
    rep = export_with_report(make_model("rnn_tanh", "forecast"), tmp_path / "f.onnx", FC, raw_audio=True)
    assert len(rep.checks) == 4 and all(d <= 1e-4 for _, d in rep.checks)
    text = rep.text()
    assert "audio ['batch', 'samples']" in text and "frontend_carry_out ['batch', 120]" in text
    assert "raw-audio stream in chunks" in text


@pytest.mark.parametrize("cell,raw_audio", [("lstm", False), ("gru", True)])
def test_int8_quantization_runs_and_stays_close(tmp_path, cell: str, raw_audio: bool) -> None:
    model = make_model(cell, "classify_mean", hidden=32)
    float_path = export_onnx(model, tmp_path / "f.onnx", FC, LABELS, raw_audio=raw_audio)
    rep = export_with_report(model, tmp_path / "q.onnx", FC, LABELS, raw_audio=raw_audio, quantize="int8")
    q = rep.quantization
    assert q is not None and q.frames == 800
    assert q.agreement is not None and q.agreement >= 0.9
    assert 0 < q.max_score_diff < 0.1  # changed (really quantised), but close
    m = onnx.load(rep.path)
    ops = {n.op_type for n in m.graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul"}, ops
    assert "ConvInteger" not in ops  # the raw-audio front end stays float
    assert {p.key: p.value for p in m.metadata_props}["rnnstream.quantization"] == "int8"
    assert "agreement" in rep.text()
    if cell == "lstm":
        assert q.quantized_ops == {"DynamicQuantizeLSTM": 2, "MatMulInteger": 1} and q.float_rnn_ops == []
    else:  # no int8 GRU kernel in onnxruntime: the GRU weights are stored int8 and dequantised (weight-only)
        assert q.quantized_ops == {"MatMulInteger": 1, "GRU (int8 weights)": 2} and q.float_rnn_ops == []
        weights = [t for t in m.graph.initializer if t.name.endswith("_int8")]
        assert len(weights) == 4 and all(t.data_type == onnx.TensorProto.INT8 for t in weights)  # W and R x 2 layers
        assert q.int8_bytes < q.float_bytes  # (the raw-audio front end's DFT basis stays float)
    # The int8 graph streams through the runtime, close to the float graph on real-ish audio.
    fb, qb = OnnxBackend(float_path), OnnxBackend(rep.path)
    assert qb.quantization == "int8" and qb.info == fb.info
    sig = noise(0.5, seed=7)
    pf, pq = StreamSession(fb, sample_rate=8000), StreamSession(qb, sample_rate=8000)
    for chunk in np.array_split(sig, 5):
        rf, rq = pf.push(chunk), pq.push(chunk)
        np.testing.assert_allclose(rq.prediction.values, rf.prediction.values, atol=0.1)
    if not raw_audio:  # comparing on given inputs
        feats = AudioFeaturizer(FC).featurize(sig)[None]
        given = compare_quantized(float_path, rep.path, fb.info, inputs=[feats])
        assert given.frames == feats.shape[1] and given.inputs == "given inputs"


def test_export_command(tmp_path, capsys) -> None:
    ckpt = tmp_path / "m.pt"
    save_checkpoint(str(ckpt), make_model("gru", "classify_last"), FC, labels=list(LABELS))
    out = tmp_path / "m.onnx"
    assert cli.main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--raw-audio"]) == 0
    text = capsys.readouterr().out
    assert f"exported {out}" in text and "max diff" in text and "audio ['batch', 'samples']" in text
    assert OnnxBackend(str(out)).info.input_kind == "audio"
    assert ox.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "q.onnx"), "--quantize", "int8", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["quantization"]["agreement"] >= 0.9 and rep["checks"][0]["max_diff"] <= 1e-4


def test_export_command_bad_checkpoint(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert ox.main(["--checkpoint", str(bad), "--out", str(tmp_path / "x.onnx")]) == 2  # an input error
    err = capsys.readouterr().err
    assert err.startswith("rnnstream export: error: ") and str(bad) in err and "Traceback" not in err
    assert not (tmp_path / "x.onnx").exists()



@pytest.mark.parametrize("overrides", [dict(feature="mfcc", n_mfcc=6), dict(n_fft=256, window="hamming"),
                                       dict(win_ms=20.0, hop_ms=20.0)])
def test_raw_audio_graph_for_other_front_ends(tmp_path, overrides: dict) -> None:
    """MFCC, zero-padded FFT with a Hamming window, and no overlap (empty carry) all pass the self-check
    and stream equal to the Python featurizer + model."""
    fc = FeatureConfig.audio_default(sample_rate=8000, n_mels=8, **overrides)
    torch.manual_seed(0)
    model = rnn_classifier(input_dim=fc.dim, num_classes=2, hidden_size=8, num_layers=1).eval()
    rep = export_with_report(model, tmp_path / "m.onnx", fc, raw_audio=True)
    assert all(d <= 1e-4 for _, d in rep.checks)
    backend = OnnxBackend(rep.path)
    sig = noise(0.4, seed=4)
    session = StreamSession(backend, sample_rate=8000)
    got = np.concatenate([session.push(c).outputs for c in np.array_split(sig, 7)])
    feats = AudioFeaturizer(fc).featurize(sig)
    want = model(torch.from_numpy(feats)[None])[0].detach().numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)

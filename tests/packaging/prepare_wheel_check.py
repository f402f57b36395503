"""Prepare the runtime-only wheel check (run by the FULL install, ``.venv/bin/python``).

Writes into ``--out``:

* ``audio.onnx``      a tiny 3-class GRU audio classifier (8 kHz, 8 log-mels), features graph: the
                      runtime featurizes in NumPy;
* ``audio_raw.onnx``  the same model with the audio front end inside the graph (``--raw-audio``);
* ``sensor.onnx``     a tiny 3-class GRU classifier of a 2-channel sensor stream (10 Hz);
* ``clip8k.wav``      2.5 s of 8 kHz int16 audio (noise, a tone, an envelope);
* ``clip16k.wav``     the same signal at 16 kHz (the runtime resamples it to 8 kHz);
* ``sensor.npz``      ``timestamps [N]`` (seconds, irregular, one gap) and ``values [N, 2]``;
* ``reference.json``  labels, scores and frame counts computed here with the public API
                      (``rnnstream.load(...).stream(...)``), plus PyTorch's own offline scores for the
                      features graph as a sanity check of the reference itself.

``check_runtime_wheel.py`` (run by a venv holding only the wheel, no torch) recomputes every entry and
compares within 1e-5. Both scripts go through the public API only, so they test what a user gets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

SEED = 0
LABELS = ("yes", "no", "maybe")
SENSOR_LABELS = ("idle", "walk", "run")
CHUNK_MS = 100


def _signal(rate: int, seconds: float = 2.5) -> np.ndarray:
    """Quiet noise + a 440 Hz tone under an envelope, int16 (exactly representable in a PCM_16 WAV)."""
    rng = np.random.default_rng(SEED)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t)
    x = 0.05 * rng.standard_normal(n) + 0.2 * env * np.sin(2 * np.pi * 440 * t)
    return np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)


def _sensor_series() -> tuple[np.ndarray, np.ndarray]:
    """~6 s of 2 channels at ~10 Hz with jittered timestamps and one 2 s gap."""
    rng = np.random.default_rng(SEED + 1)
    t = np.concatenate([np.arange(0.0, 3.0, 0.1), np.arange(5.0, 8.0, 0.1)])
    t = t + rng.uniform(0.0, 0.02, t.shape[0])
    values = np.stack([np.sin(2 * np.pi * 0.5 * t), 0.3 * rng.standard_normal(t.shape[0])], axis=1)
    return t.astype(np.float64), values.astype(np.float32)


def _scores_dict(pred, labels) -> dict[str, float]:
    scores = pred.scores
    if isinstance(scores, dict):
        return {str(k): float(v) for k, v in scores.items()}
    return {str(k): float(v) for k, v in zip(labels, scores)}


def _stream_reference(model, chunks, **stream_kw) -> dict:
    stream = model.stream(**stream_kw)
    for chunk in chunks:
        stream.push(chunk)
    stream.end()
    pred = stream.prediction
    return {"label": pred.label, "scores": _scores_dict(pred, model.labels)}


def _chunks(x: np.ndarray, size: int):
    return [x[i : i + size] for i in range(0, x.shape[0], size)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="directory to write the models, inputs and reference.json into")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    out = os.path.abspath(args.out)

    import soundfile as sf
    import torch

    import rnnstream

    if not hasattr(rnnstream, "load"):
        print("prepare: rnnstream.load is missing: this checkout has no public API yet", file=sys.stderr)
        return 1
    from rnnstream.export.onnx_export import export_onnx
    from rnnstream.models.rnn import rnn_classifier
    from rnnstream.pipeline.config import FeatureConfig

    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)

    # --- audio: mirrors tests/export/conftest.py (8 kHz, 25 ms / 10 ms, 8 log-mels) ---------------
    fc = FeatureConfig.audio_default(sample_rate=8000, n_mels=8)
    model = rnn_classifier(input_dim=fc.dim, num_classes=len(LABELS), cell="gru", hidden_size=12, num_layers=2)
    with torch.no_grad():  # non-trivial normalisation statistics, as the export tests use
        model.feat_mean.copy_(torch.from_numpy(rng.normal(-4.0, 1.0, fc.dim).astype(np.float32)))
        model.feat_std.copy_(torch.from_numpy(rng.uniform(1.0, 3.0, fc.dim).astype(np.float32)))
    model.eval()
    audio_path = str(export_onnx(model, os.path.join(out, "audio.onnx"), fc, LABELS))
    audio_raw_path = str(export_onnx(model, os.path.join(out, "audio_raw.onnx"), fc, LABELS, raw_audio=True))

    pcm8 = _signal(8000)
    pcm16 = _signal(16000)
    sf.write(os.path.join(out, "clip8k.wav"), pcm8, 8000, subtype="PCM_16")
    sf.write(os.path.join(out, "clip16k.wav"), pcm16, 16000, subtype="PCM_16")
    x8 = pcm8.astype(np.float32) / 32768.0  # what soundfile reads back as float32
    chunk = 8000 * CHUNK_MS // 1000

    # --- sensor ---------------------------------------------------------------------------------
    sfc = FeatureConfig.sensor_default(["a", "b"], rate_hz=10.0, max_gap_s=0.5, gap_policy="split")
    smodel = rnn_classifier(input_dim=sfc.dim, num_classes=len(SENSOR_LABELS), cell="gru", hidden_size=8,
                            num_layers=1)
    smodel.eval()
    sensor_path = str(export_onnx(smodel, os.path.join(out, "sensor.onnx"), sfc, SENSOR_LABELS))
    ts, vals = _sensor_series()
    np.savez(os.path.join(out, "sensor.npz"), timestamps=ts, values=vals)

    # --- references through the public API, in this (full) install --------------------------------
    ref: dict = {"chunk_ms": CHUNK_MS, "labels": list(LABELS), "sensor_labels": list(SENSOR_LABELS), "cases": {}}
    cases = ref["cases"]
    for name, path in (("audio", audio_path), ("audio_raw", audio_raw_path)):
        m = rnnstream.load(path)
        cases[f"{name}/stream_float32"] = _stream_reference(m, _chunks(x8, chunk), sample_rate=8000)
        cases[f"{name}/predict_wav8k"] = _stream_reference(m, [x8], sample_rate=8000)
        p16 = m.predict(os.path.join(out, "clip16k.wav"))
        cases[f"{name}/predict_wav16k"] = {"label": p16.label, "scores": _scores_dict(p16, m.labels)}
    sm = rnnstream.load(sensor_path)
    cases["sensor/stream"] = _stream_reference(sm, [(ts[i : i + 7], vals[i : i + 7]) for i in range(0, ts.shape[0], 7)])

    # Sanity check of the reference itself: PyTorch offline over the whole clip, on the runtime's features.
    try:
        from rnnstream.pipeline.features import AudioFeaturizer

        featurizer = AudioFeaturizer(fc)
        feats, _ = featurizer.step(x8, featurizer.initial_state())
    except (ImportError, AttributeError, TypeError) as exc:  # the featurizer's API moved: skip, say so
        print(f"prepare: no PyTorch sanity check ({type(exc).__name__}: {exc})", file=sys.stderr)
    else:
        with torch.no_grad():
            logits = model(torch.from_numpy(np.asarray(feats, dtype=np.float32))[None])[0, -1].double().numpy()
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        diff = max(abs(float(p) - cases["audio/stream_float32"]["scores"][k]) for k, p in zip(LABELS, probs))
        ref["torch_offline_max_diff"] = diff
        if diff > 1e-4:
            print(f"prepare: onnxruntime streaming differs from PyTorch offline by {diff:.3g}", file=sys.stderr)
            return 1

    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
    print(f"prepare: wrote {len(cases)} reference cases to {out}/reference.json "
          f"(torch offline vs streamed: {ref.get('torch_offline_max_diff', float('nan')):.2g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

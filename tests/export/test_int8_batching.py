"""int8 graphs under batching and chunking: dynamic quantisation scales activations per ``session.run``, so a
stream's scores move slightly with its batch companions and chunk cuts; float graphs stay exact. Bounds it."""

from __future__ import annotations

import numpy as np
import pytest
from rnnstream.export.onnx_export import export_onnx
from rnnstream.pipeline.onnx_backend import OnnxBackend
from rnnstream.pipeline.streaming import softmax

from tests.export.conftest import FC, LABELS, make_model


def _features(model, frames: int, scale: float, seed: int) -> np.ndarray:
    """Features around the model's normalisation statistics, ``scale`` standard deviations wide: [1, T, F]."""
    rng = np.random.default_rng(seed)
    mean, std = model.feat_mean.numpy(), model.feat_std.numpy()
    return (mean + scale * std * rng.standard_normal((1, frames, mean.size))).astype(np.float32)


def _probs(backend: OnnxBackend, x: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """Softmax scores of ``x [B, T, F]`` from zero states, whole or in chunks of ``chunk`` frames: [B, T, C]."""
    states = backend.info.initial_states(x.shape[0])
    outs = []
    for t in range(0, x.shape[1], chunk or x.shape[1]):
        y, states = backend.step(x[:, t : t + (chunk or x.shape[1])], states)
        outs.append(y)
    return softmax(np.concatenate(outs, axis=1).astype(np.float64))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_int8_scores_move_little_with_batch_companions_and_chunking(tmp_path, cell: str) -> None:
    model = make_model(cell, "tag", hidden=32)
    paths = {q: export_onnx(model, tmp_path / f"{q}.onnx", FC, LABELS, quantize=None if q == "float" else "int8")
             for q in ("float", "int8")}
    quiet, loud = _features(model, 60, 1.0, seed=1), _features(model, 60, 20.0, seed=2)
    for q, path in paths.items():
        backend = OnnxBackend(path, provider="cpu", threads=1)
        alone = _probs(backend, quiet)
        batched = _probs(backend, np.concatenate([quiet, loud]))[:1]
        chunked = _probs(backend, quiet, chunk=7)
        bound = 1e-5 if q == "float" else 0.02  # float: rounding only; int8: per-run activation scales
        assert np.abs(batched - alone).max() <= bound, (q, np.abs(batched - alone).max())
        assert np.abs(chunked - alone).max() <= bound, (q, np.abs(chunked - alone).max())

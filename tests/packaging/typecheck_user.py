"""A user's program, type-checked (never run) against the runtime-only install by ``.ci/check_wheel``.

``mypy --strict`` with the fresh venv's interpreter: the wheel ships ``py.typed``, so the public API's annotations
reach the user's type checker; each ``assert_type`` fails the check when a public name or return type is lost
(``Any`` does not pass ``assert_type``).
"""

from __future__ import annotations

from typing import assert_type

import numpy as np

import rnnstream


def use(path: str) -> None:
    model = rnnstream.load(path, provider="cpu", threads=1)
    assert_type(model, rnnstream.Model)
    assert_type(model.labels, list[str])
    assert_type(model.sample_rate, int | None)
    with model.stream(sample_rate=8000) as stream:
        assert_type(stream, rnnstream.Stream)
        result = stream.push(np.zeros(800, np.float32))
        assert_type(result, rnnstream.ChunkResult)
        assert_type(stream.end(), rnnstream.ChunkResult)
        prediction = stream.prediction
        assert_type(prediction, rnnstream.Prediction | None)
        if prediction is not None:
            print(prediction.label, prediction.scores)
        blob = stream.snapshot()
        assert_type(blob, bytes)
    assert_type(model.restore(blob, sample_rate=8000), rnnstream.Stream)
    assert_type(model.predict("clip.wav"), rnnstream.Prediction | None)
    try:
        rnnstream.load("missing.onnx")
    except rnnstream.RnnstreamError as err:
        assert_type(str(err), str)

"""The snapshot format's header checks (``rnnstream.pipeline.snapshot``): a restore refuses every forged or damaged
header field with a :class:`StateError` naming the field and the value, before a session exists.

The arrays' checks (shapes, dtypes, NaN, size limits, zip bombs) are exercised through the server in
tests/serving/test_attacks.py; these tests repack a real snapshot with one header field changed.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
import torch

from rnnstream.models.backend import TorchBackend
from rnnstream.models.rnn import rnn_classifier
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.errors import StateError
from rnnstream.pipeline.streaming import StreamSession

RATE = 8000


@pytest.fixture(scope="module")
def backend() -> TorchBackend:
    torch.manual_seed(0)
    cfg = FeatureConfig.audio_default(sample_rate=RATE, n_mels=8)
    return TorchBackend(rnn_classifier(input_dim=8, num_classes=3, hidden_size=8, num_layers=1), cfg)


@pytest.fixture(scope="module")
def blob(backend: TorchBackend) -> bytes:
    session = StreamSession(backend, sample_rate=RATE, stream_id="mic-1")
    session.push(np.random.default_rng(0).standard_normal(1234).astype(np.float32) * 0.1)
    return session.snapshot()


def _with_header(blob: bytes, **changes: Any) -> bytes:
    """``blob`` with header fields replaced (``...``: removed); every array kept as it is."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(str(arrays["header"]))
    for key, value in changes.items():
        if value is ...:
            header.pop(key, None)
        else:
            header[key] = value
    arrays["header"] = np.array(json.dumps(header))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_an_untouched_repack_restores_exactly(backend: TorchBackend, blob: bytes) -> None:
    restored = StreamSession.restore(backend, _with_header(blob))
    assert (restored.stream_id, restored.samples_seen, restored.sample_rate) == ("mic-1", 1234, RATE)
    assert restored.snapshot() == blob


@pytest.mark.parametrize("field,value,message", [
    ("samples_seen", -1, "'samples_seen' is -1; expected int"),
    ("samples_seen", True, "'samples_seen' is True; expected int"),
    ("samples_seen", 12.5, "'samples_seen' is 12.5; expected int"),
    ("samples_seen", ..., "'samples_seen' is None; expected int"),
    ("frames_seen", "3", "'frames_seen' is '3'; expected int"),
    ("t", "soon", "'t' is 'soon'; expected a number"),
    ("t", None, "'t' is None; expected a number"),
    ("stream_id", 7, "'stream_id' is 7; expected str"),
    ("format", "rnnstream.snapshot/1", "snapshot format 'rnnstream.snapshot/1' is not supported"),
    ("weights_hash", "0" * 16, "snapshot belongs to model 0000000000000000"),
    ("feature_config", "{}", "another feature config"),
])
def test_a_bad_header_field_is_refused_naming_it(backend: TorchBackend, blob: bytes, field: str, value: Any,
                                                 message: str) -> None:
    with pytest.raises(StateError, match=message.replace("(", r"\(").replace(")", r"\)")):
        StreamSession.restore(backend, _with_header(blob, **{field: value}))


def test_a_non_finite_time_is_refused(backend: TorchBackend, blob: bytes) -> None:
    for t, shown in ((float("inf"), "inf"), (float("nan"), "nan")):  # json writes them as Infinity / NaN
        with pytest.raises(StateError, match=f"'t' is {shown}; expected a finite number"):
            StreamSession.restore(backend, _with_header(blob, t=t))


def test_a_negative_time_is_kept_as_the_format_allows(backend: TorchBackend, blob: bytes) -> None:
    """``t`` is a number of seconds, any sign (only counters must be >= 0): -2 and -2.5 restore alike."""
    for t in (-2, -2.5):
        assert StreamSession.restore(backend, _with_header(blob, t=t)).t == float(t)

"""``ChunkMessageCoder``: every field of a parsed chunk message survives Beam's encoding exactly."""

from __future__ import annotations

import numpy as np
import pytest
from rnnstream.beam_jobs.message_coder import ChunkMessageCoder
from rnnstream.pipeline.errors import MessageError
from rnnstream.pipeline.stream_checks import ChunkMessage

RNG = np.random.default_rng(0)

MESSAGES = [
    ChunkMessage("mic-1", 0, 1.7e9, audio=RNG.standard_normal(1600).astype(np.float32), sample_rate=16000),
    ChunkMessage("mic-1", 2**53, 0.0, end=True, model="abc123", audio=np.zeros(0, np.float32)),
    ChunkMessage("pump 3", 7, 12.5, timestamps=np.arange(4, dtype=np.float64),
                 values=RNG.standard_normal((4, 3))),
    ChunkMessage("pump 3", 8, 13.0, timestamps=np.arange(2, dtype=np.float64),
                 values=RNG.standard_normal((2, 3)).astype(np.float32)),
    ChunkMessage("ñandú", 40, 99.0, kind="resume", snapshot=b"\x00snap\xff" * 10, sample_rate=8000),
]


def _same(a: ChunkMessage, b: ChunkMessage) -> None:
    for field in ("stream", "seq", "event_time", "kind", "end", "model", "snapshot", "sample_rate"):
        assert getattr(a, field) == getattr(b, field), field
        assert type(getattr(a, field)) is type(getattr(b, field)), field
    for field in ("audio", "timestamps", "values"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None), field
        if x is not None:
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y) and y.flags.writeable


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: f"{m.stream}-{m.seq}")
def test_round_trip_is_exact(msg: ChunkMessage) -> None:
    coder = ChunkMessageCoder()
    _same(msg, coder.decode(coder.encode(msg)))


def test_another_layout_is_refused_by_name() -> None:
    import pickle

    with pytest.raises(MessageError, match="coder layout 99"):
        ChunkMessageCoder().decode(pickle.dumps((99,) + (None,) * 11))


def test_the_stream_job_uses_it_for_its_shuffle() -> None:
    import apache_beam as beam
    from apache_beam.pipeline import PipelineVisitor
    from rnnstream.beam_jobs.stateful import StreamInference

    p = beam.Pipeline("DirectRunner")
    _ = p | beam.Create([b"{}"]) | StreamInference("model-not-loaded-at-construction.onnx")
    coders: dict[str, str] = {}

    class Visit(PipelineVisitor):
        def visit_transform(self, node) -> None:  # type: ignore[no-untyped-def]
            for tag, pcoll in node.outputs.items():
                coders[f"{node.full_label}:{tag}"] = repr(beam.coders.registry.get_coder(pcoll.element_type))

    p.visit(Visit())
    (parsed,) = [c for label, c in coders.items() if label.endswith("ParseMessages/ParDo(_ParseFn):None")]
    assert parsed == "TupleCoder[StrUtf8Coder, ChunkMessageCoder]"

"""rnnstream.stream_eval: chunking a raw recording, and the streamed-evaluation report's numbers."""

from __future__ import annotations

import numpy as np

from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.streaming import SensorChunk
from rnnstream.stream_eval import StreamedItem, StreamReport, raw_chunks


def test_raw_chunks_cut_audio_and_sensor_rows_with_their_stream_time() -> None:
    audio = FeatureConfig.audio_default(sample_rate=8000)
    parts = list(raw_chunks(np.arange(2000, dtype=np.float32), audio, 0.1))
    assert [p.shape[0] for p, _ in parts] == [800, 800, 400] and [s for _, s in parts] == [0.1, 0.1, 0.05]
    np.testing.assert_array_equal(np.concatenate([p for p, _ in parts]), np.arange(2000))
    sensor = FeatureConfig.sensor_default(["a", "b"], rate_hz=10.0)
    ts, vals = np.arange(25) / 10.0, np.ones((25, 2))
    rows = list(raw_chunks((ts, vals), sensor, 1.0))
    assert all(isinstance(c, SensorChunk) for c, _ in rows)
    assert [c.timestamps.size for c, _ in rows] == [10, 10, 5] and [s for _, s in rows] == [1.0, 1.0, 0.5]


def _item(label: str, stream: str, offline: str, diff: float) -> StreamedItem:
    return StreamedItem(id=label, path=f"{label}.wav", label=label, stream_predicted=stream, offline_predicted=offline,
                        stream_scores=[0.7, 0.3], offline_scores=[0.6, 0.4], max_logit_diff=diff, frames=3)


def test_the_report_counts_accuracy_agreement_and_confusions() -> None:
    items = [_item("a", "a", "a", 1e-6), _item("b", "a", "b", 2e-6), _item("b", "b", "b", 0.0)]
    report = StreamReport(items=items, latencies_ms=[1.0, 2.0, 3.0, 10.0], chunk_s=0.1, labels=("a", "b"))
    s = report.summary()
    assert (s["n"], s["chunks"], s["latency_ms_max"], s["latency_ms_mean"]) == (3, 4, 10.0, 4.0)
    assert (s["accuracy_streaming_onnx"], s["accuracy_offline_torch"], s["label_agreement"]) == (2 / 3, 1.0, 2 / 3)
    assert abs(s["max_abs_score_diff"] - 0.1) < 1e-12 and s["max_abs_logit_diff_all_frames"] == 2e-6
    assert report.confusion("stream").tolist() == [[1, 0], [1, 1]]
    assert report.confusion("offline").tolist() == [[1, 0], [0, 2]]

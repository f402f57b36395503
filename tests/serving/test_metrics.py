"""The server's metrics helpers."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram
from rnnstream.serving.metrics import SECONDS_BUCKETS, observe_many


def _samples(hist: Histogram) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels.get("le", "")): s.value for m in hist.collect() for s in m.samples}


def test_observe_many_equals_one_observe_per_amount() -> None:
    rng = np.random.default_rng(0)
    amounts = [*rng.exponential(0.01, 200).tolist(), 0.0005, 0.001, 5.0, 7.5]  # bucket bounds exactly, and past them
    one, many = (Histogram("h", "test", buckets=SECONDS_BUCKETS, registry=CollectorRegistry()) for _ in range(2))
    for a in amounts:
        one.observe(a)
    observe_many(many, amounts[:100])
    observe_many(many, amounts[100:])
    observe_many(many, [])
    got, want = _samples(many), _samples(one)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert abs(got[key] - value) < 1e-9, key

"""The streaming resampler equals offline resampling of the whole signal under any chunking."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import resample_poly

from rnnstream.pipeline.errors import ConfigError, StateError
from rnnstream.pipeline.resample import StreamResampler, rate_ratio, resample

RATES = [(8000, 16000), (16000, 8000), (44100, 16000), (22050, 16000), (48000, 16000), (11025, 8000), (16000, 16000)]


def _stream(rs: StreamResampler, x: np.ndarray, cuts: list[int]) -> np.ndarray:
    parts = [rs.push(p) for p in np.split(x, cuts)]
    return np.concatenate([*parts, rs.end()])


def _signal(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 8000.0
    return (0.4 * np.sin(2 * np.pi * rng.uniform(50, 3500) * t) + rng.normal(0, 0.1, n)).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(rates=st.sampled_from(RATES), seed=st.integers(0, 2**31 - 1), n=st.integers(0, 6000),
       cuts=st.lists(st.integers(0, 6000), max_size=12))
def test_streaming_equals_offline_over_random_chunkings(rates, seed, n, cuts):
    x = _signal(seed, n)
    want = resample(x, *rates)
    got = _stream(StreamResampler(*rates), x, sorted(c for c in cuts if c <= n))
    assert got.dtype == np.float32 and got.shape == want.shape == (-(-n * rates[1] // rates[0]),)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rates", RATES)
def test_offline_is_scipy_resample_poly(rates):
    x = _signal(1, 4321)
    up, down = rate_ratio(*rates)
    np.testing.assert_allclose(resample(x, *rates), resample_poly(x.astype(np.float64), up, down), atol=1e-6)


def test_outputs_come_out_as_soon_as_their_inputs_arrived():
    rs = StreamResampler(8000, 16000)
    out = rs.push(np.ones(800, np.float32))  # 100 ms in
    held = 1600 - out.size
    assert 0 < held <= 2 * 10 + 2  # half the filter: 10 input samples = 20 output samples
    assert rs.end().size == held


@settings(max_examples=25, deadline=None)
@given(rates=st.sampled_from(RATES[:5]), seed=st.integers(0, 1000), cut=st.integers(0, 3000))
def test_state_round_trip_continues_exactly(rates, seed, cut):
    x = _signal(seed, 3000)
    whole = _stream(StreamResampler(*rates), x, [cut])
    rs = StreamResampler(*rates)
    first = rs.push(x[:cut])
    buf, counters = rs.state()
    moved = StreamResampler.from_state(buf, counters)
    rest = np.concatenate([moved.push(x[cut:]), moved.end()])
    np.testing.assert_array_equal(np.concatenate([first, rest]), whole)


def test_bad_rates_and_states_are_refused():
    for bad in (0, -8000, 8000.5, True, None):
        with pytest.raises(ConfigError, match="sample rate must be a positive integer"):
            StreamResampler(bad, 16000)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ratio"):
        StreamResampler(16001, 16000)
    rs = StreamResampler(8000, 16000)
    rs.push(np.zeros(100, np.float32))
    buf, counters = rs.state()
    with pytest.raises(StateError, match="do not fit"):
        StreamResampler.from_state(buf[:-1], counters)
    with pytest.raises(StateError, match="finite"):
        StreamResampler.from_state(np.full_like(buf, np.nan), counters)
    with pytest.raises(StateError, match="malformed|incomplete"):
        StreamResampler.from_state(buf, {"orig_rate": 8000})
    rs.end()
    with pytest.raises(StateError, match="ended"):
        rs.push(np.zeros(3, np.float32))

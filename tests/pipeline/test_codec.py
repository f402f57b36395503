"""One sample codec: int16 PCM is scaled by 1/32768 everywhere; other integer dtypes are refused."""

from __future__ import annotations

import numpy as np
import pytest

from rnnstream.pipeline.codec import PCM16_SCALE, decode_samples, encode_samples, to_float32
from rnnstream.pipeline.errors import NonFiniteSamplesError, ShapeError


def test_int16_scale_and_float_passthrough():
    pcm = np.array([-32768, -16384, 0, 1, 32767], np.int16)
    np.testing.assert_array_equal(to_float32(pcm), pcm.astype(np.float32) / 32768.0)
    assert to_float32(pcm)[0] == -1.0 and PCM16_SCALE == 32768.0
    x = np.array([0.5, -0.25], np.float64)
    assert to_float32(x).dtype == np.float32 and to_float32(x).tolist() == [0.5, -0.25]
    assert to_float32([]).shape == (0,)


@pytest.mark.parametrize("bad", [np.zeros(4, np.int32), np.zeros(4, np.uint8), np.zeros(4, bool),
                                 np.zeros(4, np.complex64), np.array(["a"]), [1, 2, 3]])
def test_ambiguous_dtypes_are_refused(bad):
    with pytest.raises(ShapeError, match="expected float samples in \\[-1, 1\\] or int16 PCM"):
        to_float32(bad)


def test_shape_and_finiteness():
    with pytest.raises(ShapeError, match="mono"):
        to_float32(np.zeros((2, 3), np.float32))
    with pytest.raises(NonFiniteSamplesError, match="2 of 3 samples"):
        to_float32(np.array([np.nan, 0.0, np.inf], np.float32))


def test_finiteness_can_be_left_to_the_callers_check():
    """``check_finite=False`` (the server's wire decode; its stream core checks every payload on accept)."""
    raw = np.array([np.nan, 0.5], "<f4").tobytes()
    with pytest.raises(NonFiniteSamplesError, match="1 of 2 samples"):
        decode_samples(raw, "float32")
    assert np.isnan(decode_samples(raw, "float32", check_finite=False)[0])
    with pytest.raises(ShapeError, match="mono"):  # the other checks stay
        to_float32(np.zeros((2, 3), np.float32), check_finite=False)


def test_wire_round_trips():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 1000).astype(np.float32)
    np.testing.assert_array_equal(decode_samples(encode_samples(x, "float32"), "float32"), x)
    y = decode_samples(encode_samples(x, "int16"), "int16")
    np.testing.assert_allclose(y, x, atol=0.5 / 32768 + 1e-7)
    np.testing.assert_array_equal(encode_samples(np.array([1.0, -1.0], np.float32), "int16"),
                                  np.array([32767, -32768], "<i2").tobytes())
    with pytest.raises(ShapeError, match="whole number of int16 samples"):
        decode_samples(b"\x00\x01\x02", "int16")
    with pytest.raises(ShapeError, match="encoding"):
        decode_samples(b"", "int8")  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(0,), (7,), (3, 5)])
def test_all_finite_matches_isfinite_including_values_whose_squares_overflow(shape):
    from rnnstream.pipeline.codec import all_finite

    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        x = rng.normal(0, 1, shape).astype(dtype)
        assert all_finite(x)
        if not x.size:
            continue
        big = x.copy()
        big.flat[0] = np.finfo(dtype).max / 2  # finite, but its square overflows the dot product
        assert all_finite(big)
        for bad in (np.nan, np.inf, -np.inf):
            y = x.copy()
            y.flat[-1] = bad
            assert not all_finite(y)

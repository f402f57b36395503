"""Sample-rate conversion whose streaming output equals offline conversion of the whole signal.

::

    y = resample(x, 8000, 16000)                 # offline: scipy.signal.resample_poly, float32 [ceil(N * 2)]
    rs = StreamResampler(8000, 16000)
    parts = [rs.push(c) for c in chunks] + [rs.end()]
    np.concatenate(parts) == y                    # under any chunking (a property test holds it)

Offline conversion is :func:`scipy.signal.resample_poly` (a Kaiser-windowed FIR, polyphase, zero-phase)
computed in float64 and returned as float32. :class:`StreamResampler` computes the same output samples from the
same filter with :func:`scipy.signal.upfirdn` over a short window of recent input, emitting each output sample as
soon as every input sample it depends on has arrived: it lags by half the filter (``10 * max(up, down) / up``
input samples, e.g. 10 samples = 1.25 ms from 8 kHz to 16 kHz) until :meth:`StreamResampler.end` flushes the
tail. Its whole state is a few integers and that window, so a stream's snapshot carries it
(:meth:`StreamResampler.state` / :meth:`StreamResampler.from_state`).

SciPy is imported on first use only: a stream at the model's rate never loads it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from rnnstream.pipeline.errors import ConfigError, StateError

#: Highest rate ratio accepted (either way): beyond it the filter (``20 * max(up, down)`` taps) gets absurd.
MAX_RATIO_TERM = 4096


def rate_ratio(orig_rate: int, new_rate: int) -> tuple[int, int]:
    """``(up, down)`` in lowest terms for ``orig_rate -> new_rate`` (:class:`ConfigError` for bad rates)."""
    for name, rate in (("source", orig_rate), ("target", new_rate)):
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise ConfigError(f"{name} sample rate must be a positive integer (Hz), got {rate!r}")
    g = math.gcd(int(orig_rate), int(new_rate))
    up, down = int(new_rate) // g, int(orig_rate) // g
    if max(up, down) > MAX_RATIO_TERM:
        raise ConfigError(
            f"cannot resample {orig_rate} Hz to {new_rate} Hz: the ratio {up}/{down} needs a filter of "
            f"{20 * max(up, down) + 1} taps (terms above {MAX_RATIO_TERM} are refused)"
        )
    return up, down


def resample(samples: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Offline conversion ``[N] -> [ceil(N * new / orig)]`` float32 (``scipy.signal.resample_poly``, float64)."""
    x = np.asarray(samples, dtype=np.float64)
    if int(orig_rate) == int(new_rate):
        return x.astype(np.float32)
    up, down = rate_ratio(orig_rate, new_rate)
    from scipy.signal import resample_poly

    return resample_poly(x, up, down).astype(np.float32)


@dataclass(frozen=True)
class _Filter:
    """``resample_poly``'s filter for ``(up, down)``: taps ``h`` (pre-padded), and outputs dropped at the start."""

    up: int
    down: int
    h: np.ndarray
    pre_remove: int


@functools.lru_cache(maxsize=16)
def _filter(up: int, down: int) -> _Filter:
    from scipy.signal import firwin

    max_rate = max(up, down)
    half_len = 10 * max_rate
    h = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * up
    pre_pad = down - half_len % down
    h = np.concatenate((np.zeros(pre_pad), h))
    h.flags.writeable = False
    return _Filter(up, down, h, (half_len + pre_pad) // down)


class StreamResampler:
    """Streaming ``orig_rate -> new_rate`` conversion equal to :func:`resample` of the whole signal.

    ``push(x [S]) -> y [S']`` returns the output samples whose inputs have all arrived; ``end() -> y`` the rest
    (the input is zero past its end, as offline). The concatenation equals :func:`resample` of the concatenated
    input (float64 arithmetic; output float32).
    """

    def __init__(self, orig_rate: int, new_rate: int):
        self._up, self._down = rate_ratio(orig_rate, new_rate)
        self.orig_rate, self.new_rate = int(orig_rate), int(new_rate)
        self._buf = np.zeros(0, np.float64)  # input samples from absolute index _base on
        self._base = 0  # a multiple of down, so the buffer's outputs align with the whole signal's
        self._n_in = 0  # input samples received
        self._m_next = 0  # next output sample to emit
        self._ended = False

    @property
    def ended(self) -> bool:
        return self._ended

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Consume float samples ``[S]``; return the float32 output samples now complete (maybe none)."""
        if self._ended:
            raise StateError("this resampler has ended; open a new stream to push more samples")
        if self._up == self._down:  # the same rate: nothing to convert
            return np.asarray(samples, dtype=np.float32).copy()
        x = np.asarray(samples, dtype=np.float64)
        if x.size:
            self._buf = np.concatenate((self._buf, x))
            self._n_in += x.size
        # output m needs inputs up to floor((m + pre_remove) * down / up) <= n_in - 1
        ready = -(-self._n_in * self._up // self._down) - self._filter.pre_remove
        return self._emit(ready)

    def end(self) -> np.ndarray:
        """Flush: the remaining output samples (the input is zero past its end). Further pushes are refused."""
        if self._ended:
            return np.zeros(0, np.float32)
        self._ended = True
        return self._emit(-(-self._n_in * self._up // self._down))

    @property
    def _filter(self) -> _Filter:
        return _filter(self._up, self._down)

    def _emit(self, stop: int) -> np.ndarray:
        if stop <= self._m_next or self._up == self._down:
            return np.zeros(0, np.float32)
        from scipy.signal import upfirdn

        f = self._filter
        z = upfirdn(f.h, self._buf, self._up, self._down)  # z[k] is the whole signal's output base*up/down + k
        first = self._m_next + f.pre_remove - self._base * self._up // self._down
        y = z[first : first + stop - self._m_next]
        if y.size < stop - self._m_next:  # the tail past the buffer: inputs there are zero
            y = np.concatenate((y, np.zeros(stop - self._m_next - y.size)))
        self._m_next = stop
        self._trim()
        return y.astype(np.float32)

    def _trim(self) -> None:
        """Drop inputs no future output needs (keeping the buffer start a multiple of ``down``)."""
        f = self._filter
        j = self._m_next + f.pre_remove  # the next output, in upfirdn's indexing of the whole signal
        first_needed = max(0, -(-(j * self._down - f.h.size + 1) // self._up))
        base = first_needed // self._down * self._down
        if base > self._base:
            self._buf = self._buf[base - self._base :].copy()
            self._base = base

    # -- snapshots ---------------------------------------------------------------------------
    def state(self) -> tuple[np.ndarray, dict[str, int]]:
        """``(buffer float64 [K], counters)``: everything needed to continue elsewhere."""
        return self._buf.copy(), {"orig_rate": self.orig_rate, "new_rate": self.new_rate, "base": self._base,
                                  "n_in": self._n_in, "m_next": self._m_next, "ended": int(self._ended)}

    @classmethod
    def from_state(cls, buf: np.ndarray, counters: dict[str, int]) -> "StreamResampler":
        """The inverse of :meth:`state`; :class:`StateError` when the pieces do not fit together."""
        try:
            rs = cls(int(counters["orig_rate"]), int(counters["new_rate"]))
            base, n_in, m_next = int(counters["base"]), int(counters["n_in"]), int(counters["m_next"])
            ended = bool(int(counters["ended"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"resampler state is incomplete or malformed: {exc}") from None
        arr = np.asarray(buf)
        if arr.ndim != 1 or arr.dtype.kind != "f" or not np.isfinite(arr).all():
            raise StateError(f"resampler buffer must be finite floats [K], got {arr.dtype} {list(arr.shape)}")
        if not (0 <= base <= n_in and base % rs._down == 0 and base + arr.size == n_in and m_next >= 0):
            raise StateError(f"resampler counters do not fit its buffer: base={base}, n_in={n_in}, "
                             f"buffer={arr.size}, m_next={m_next}")
        rs._buf, rs._base, rs._n_in, rs._m_next, rs._ended = arr.astype(np.float64), base, n_in, m_next, ended
        return rs


__all__ = ["StreamResampler", "rate_ratio", "resample"]

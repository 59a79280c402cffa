"""Time-varying link rates on a simulated clock, and how long a payload takes on them.

A `Channel` is a piecewise-constant rate in bits per second: `rates[i]` holds on
`[times[i], times[i + 1])`, and the last rate holds on. Generated channels (`random_walk`,
`rayleigh`) draw their steps lazily, in fixed blocks from their own seeded generator, so the
rates depend only on the seed, never on how far a run has looked ahead. No threads, no sleeping.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

BLOCK_STEPS = 256  # steps drawn at a time by the generated channels


class Channel:
    """A piecewise-constant link rate (bits/s) starting at time 0.

    Parameters
    ----------
    times : array of float
        Segment starts in seconds: `times[0] == 0`, strictly increasing.
    rates : array of float
        The rate on each segment, >= 0; the last one must be > 0 unless `more` can extend it.
    more : callable, optional
        Returns the next segments `(times, rates)` when asked; without it the last rate holds
        forever.
    """

    def __init__(
        self,
        times: np.ndarray,
        rates: np.ndarray,
        more: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> None:
        self._times = np.asarray(times, dtype=float)
        self._rates = np.asarray(rates, dtype=float)
        if self._times.size == 0 or self._times[0] != 0 or np.any(np.diff(self._times) <= 0):
            raise ValueError("segment times must start at 0 and increase strictly")
        if self._rates.shape != self._times.shape or np.any(self._rates < 0):
            raise ValueError("one rate >= 0 per segment")
        self._more = more

    def _extend(self) -> None:
        times, rates = self._more()
        self._times = np.concatenate([self._times, times])
        self._rates = np.concatenate([self._rates, rates])

    def _segment_end(self, index: int) -> float:
        """End of segment `index`, drawing further segments when the channel can."""
        if index + 1 == self._times.size and self._more is not None:
            self._extend()
        return float(self._times[index + 1]) if index + 1 < self._times.size else np.inf

    def _segment_at(self, time_s: float) -> int:
        while self._more is not None and self._times[-1] <= time_s:
            self._extend()
        return int(np.searchsorted(self._times, time_s, side="right")) - 1

    def rate_at(self, time_s: float) -> float:
        """The rate at `time_s` (bits/s)."""
        index = self._segment_at(time_s)  # may draw more segments: index after it
        return float(self._rates[index])

    def transmit_end(self, start_s: float, bits: float) -> float:
        """When `bits` sent from `start_s` have all arrived: the rate may change on the way."""
        if bits < 0 or start_s < 0:
            raise ValueError(f"bits={bits} and start_s={start_s} must be >= 0")
        index, time_s, left = self._segment_at(start_s), float(start_s), float(bits)
        while left > 0:
            end, rate = self._segment_end(index), float(self._rates[index])
            if rate > 0 and left <= rate * (end - time_s):
                return time_s + left / rate
            if end == np.inf:
                raise ValueError("the channel's last rate is 0: the payload never arrives")
            left -= rate * (end - time_s)
            time_s, index = end, index + 1
        return time_s

    def segments(self, start_s: float, end_s: float) -> list[tuple[float, float, float]]:
        """The `(start, end, rate)` pieces covering `[start_s, end_s)`."""
        pieces, index, time_s = [], self._segment_at(start_s), float(start_s)
        while time_s < end_s:
            end = min(self._segment_end(index), end_s)
            pieces.append((time_s, end, float(self._rates[index])))
            time_s, index = end, index + 1
        return pieces


def stepped(step_s: float, draw_block: Callable[[], np.ndarray]) -> Channel:
    """A channel whose rate changes every `step_s`, the rates drawn a block at a time."""
    more = _Steps(step_s, draw_block)
    first_times, first_rates = more()
    return Channel(first_times, first_rates, more)


class _Steps:
    """The next block of a stepped channel's segments (a class, not a closure: a checkpoint
    pickles the channel with its generator's position)."""

    def __init__(self, step_s: float, draw_block: Callable[[], np.ndarray]) -> None:
        self.step_s, self.draw_block, self.drawn = step_s, draw_block, 0

    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        rates = self.draw_block()
        times = (self.drawn + np.arange(rates.size)) * self.step_s
        self.drawn += rates.size
        return times, rates


def random_walk(
    rng: np.random.Generator,
    min_bps: float,
    max_bps: float,
    change_low_bps: float,
    change_high_bps: float,
    step_s: float,
) -> Channel:
    """The source's model: start in U(min, max), add U(change-low, change-high) a step, clip."""
    return stepped(step_s, _RandomWalk(rng, min_bps, max_bps, change_low_bps, change_high_bps))


class _RandomWalk:
    """Blocks of a random walk's rates, clipped to [min_bps, max_bps]."""

    def __init__(
        self,
        rng: np.random.Generator,
        min_bps: float,
        max_bps: float,
        change_low_bps: float,
        change_high_bps: float,
    ) -> None:
        self.rng, self.bounds = rng, (min_bps, max_bps)
        self.changes = (change_low_bps, change_high_bps)
        self.rate = rng.uniform(min_bps, max_bps)

    def __call__(self) -> np.ndarray:
        changes = self.rng.uniform(*self.changes, BLOCK_STEPS)
        block = np.empty(BLOCK_STEPS)
        for i, change in enumerate(changes):
            block[i] = self.rate
            self.rate = min(max(self.rate + change, self.bounds[0]), self.bounds[1])
        return block


def rayleigh(
    rng: np.random.Generator, bandwidth_hz: float, mean_snr: float, step_s: float
) -> Channel:
    """Block fading on a Shannon link: bandwidth * log2(1 + mean_snr * |h|^2), |h|^2 ~ Exp(1)."""
    return stepped(step_s, _Rayleigh(rng, bandwidth_hz, mean_snr))


class _Rayleigh:
    """Blocks of Shannon rates under Rayleigh fading."""

    def __init__(self, rng: np.random.Generator, bandwidth_hz: float, mean_snr: float) -> None:
        self.rng, self.bandwidth_hz, self.mean_snr = rng, bandwidth_hz, mean_snr

    def __call__(self) -> np.ndarray:
        gains = self.rng.exponential(1.0, BLOCK_STEPS)
        return self.bandwidth_hz * np.log2(1.0 + self.mean_snr * gains)


def mean_snr_at(distance_m: float, snr_db_at_reference: float, reference_m: float, exponent: float):
    """Linear mean SNR at `distance_m` under log-distance path loss from a reference distance."""
    snr_db = snr_db_at_reference - 10.0 * exponent * np.log10(distance_m / reference_m)
    return float(10.0 ** (snr_db / 10.0))

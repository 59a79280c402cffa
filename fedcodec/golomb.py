"""Golomb-Rice code for the gaps between sorted positions (STC's position code).

Gap g >= 0 (entries skipped before the next kept one) costs floor(g / 2^b) ones, one zero
and b remainder bits, as in Sattler et al. A tensor's code holds all unary parts first, then
all remainders: the same number of bits as interleaving them, and both halves decode with
vectorised numpy instead of a bit-by-bit loop.
"""

from __future__ import annotations

import math

import numpy as np

GOLDEN_RATIO = (1 + math.sqrt(5)) / 2


def rice_parameter(density: float) -> int:
    """STC's b* = 1 + floor(log2(ln(phi - 1) / ln(1 - q))) for density q = k / N, at least 0.

    Examples: q = 0.01 gives 6, q = 0.001 gives 9, q = 0.5 gives 0.
    """
    if not 0.0 < density < 1.0:
        return 0
    ratio = math.log(GOLDEN_RATIO - 1) / math.log(1 - density)
    return max(0, 1 + math.floor(math.log2(ratio)))


def gap_bits(positions: np.ndarray, b: int) -> np.ndarray:
    """Code strictly increasing positions >= 0 as a 0/1 uint8 array (one entry per bit)."""
    positions = np.asarray(positions, dtype=np.int64)
    gaps = np.diff(positions, prepend=-1) - 1
    if gaps.size and gaps.min() < 0:
        raise ValueError("positions must be strictly increasing and >= 0")
    quotients = gaps >> b
    unary_bits = int(quotients.sum()) + len(gaps)
    bits = np.ones(unary_bits + b * len(gaps), dtype=np.uint8)
    bits[np.cumsum(quotients + 1) - 1] = 0  # the zero that ends each unary part
    if b:
        shifts = np.arange(b - 1, -1, -1, dtype=np.int64)
        bits[unary_bits:] = ((gaps[:, None] >> shifts) & 1).ravel()
    return bits


def read_gaps(bits: np.ndarray, count: int, b: int, size: int) -> tuple[np.ndarray, int]:
    """Inverse of `gap_bits` at the start of `bits`: (the `count` positions, bits read).

    `size` is the length of the coded tensor: positions are < size, so the unary half is at
    most count + size / 2^b bits and the search for its zeros stops there.
    """
    if count == 0:
        return np.zeros(0, dtype=np.int64), 0
    window = bits[: count + (size >> b) + 1]
    ends = np.flatnonzero(window == 0)[:count]  # the unary half holds exactly `count` zeros
    if len(ends) < count:
        raise ValueError("truncated position code")
    unary_bits = int(ends[-1]) + 1
    quotients = np.diff(ends, prepend=-1) - 1
    remainders = np.zeros(count, dtype=np.int64)
    if b:
        tail = bits[unary_bits : unary_bits + b * count]
        if len(tail) != b * count:
            raise ValueError("truncated position code")
        remainders = tail.reshape(count, b).astype(np.int64) @ (1 << np.arange(b - 1, -1, -1))
    gaps = (quotients.astype(np.int64) << b) + remainders
    return np.cumsum(gaps + 1) - 1, unary_bits + b * count

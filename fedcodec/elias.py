"""Elias-gamma codes of positive integers, packed MSB first (numba loops).

The code of n >= 1 is floor(log2 n) zeros, then n in binary: 1 -> "1", 2 -> "010",
4 -> "00100"; 2 floor(log2 n) + 1 bits. QSGD (Alistarh et al., 2017) codes its levels so,
and TensorFlow Federated's entropy compression reports the same bitrate.
"""

from __future__ import annotations

import numpy as np
from numba import njit

MAX_ZEROS = 62  # the longest run of leading zeros a decoder accepts (values < 2**63)


def code_bits(values: np.ndarray) -> int:
    """The exact length in bits of the codes of `values` (each >= 1)."""
    return int(np.sum(2 * _floor_log2(np.asarray(values, np.int64)) + 1))


def encode(values: np.ndarray) -> tuple[np.ndarray, int]:
    """(the packed codes of `values`, their length in bits); every value must be >= 1."""
    values = np.ascontiguousarray(values, dtype=np.int64)
    if values.size and values.min() < 1:
        raise ValueError("Elias-gamma codes integers >= 1")
    lengths = 2 * _floor_log2(values) + 1
    total = int(lengths.sum())
    return _encode(values, lengths, (total + 7) // 8), total


def decode(packed: np.ndarray, count: int, start: int = 0) -> tuple[np.ndarray, int]:
    """`count` values coded from bit `start` of `packed`, and the bit after the last code.

    Raises ValueError when the stream ends inside a code or a code has too many zeros.
    """
    values, end = _decode(np.ascontiguousarray(packed, dtype=np.uint8), count, start)
    if end < 0:
        raise ValueError(f"the Elias-gamma stream of {8 * packed.size} bits ends inside a code")
    return values, end


def _floor_log2(values: np.ndarray) -> np.ndarray:
    lengths = np.zeros(values.shape, np.int64)
    remaining = values.copy()
    while np.any(remaining > 1):
        more = remaining > 1
        lengths[more] += 1
        remaining[more] >>= 1
    return lengths


@njit(cache=True)
def _encode(values, lengths, size):  # pragma: no cover (compiled)
    out = np.zeros(size, np.uint8)
    position = 0
    for i in range(values.size):
        zeros = (lengths[i] - 1) // 2
        position += zeros
        for bit in range(zeros, -1, -1):
            if (values[i] >> bit) & 1:
                out[position >> 3] |= 0x80 >> (position & 7)
            position += 1
    return out


@njit(cache=True)
def _decode(packed, count, start):  # pragma: no cover (compiled)
    out = np.zeros(count, np.int64)
    limit = packed.size * 8
    position = start
    for i in range(count):
        zeros = 0
        while position < limit and not (packed[position >> 3] >> (7 - (position & 7))) & 1:
            zeros += 1
            position += 1
            if zeros > MAX_ZEROS:
                return out, -1
        if position + zeros >= limit:
            return out, -1
        value = 0
        for _ in range(zeros + 1):
            value = (value << 1) | ((packed[position >> 3] >> (7 - (position & 7))) & 1)
            position += 1
        out[i] = value
    return out, position

"""Pack k-bit codes (1 <= k <= 8) into a byte stream, most significant bit first.

The result is bit for bit `np.packbits` of the codes written out k bits each, built with
whole-array integer operations instead of one byte per bit:

- k = 1: `np.packbits` itself.
- k = 2, 4: the 8 / k codes of a byte are read as one little-endian word; one multiplication
  moves every code to its place in the top byte (the other products land below it, carry-free),
  and one multiplication spreads a byte back into the word.
- other k: a group of G codes fills B = G k / 8 bytes; each byte is the OR of the shifted codes
  that overlap it (the `_layout`), computed column by column over cache-sized blocks.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

WORDS = {2: np.dtype("<u4"), 4: np.dtype("<u2")}  # codes per byte read as one word
BLOCK = 1 << 15  # groups per block of the column packer


def packed_bytes(count: int, bits: int) -> int:
    """Bytes that `count` codes of `bits` bits occupy once packed."""
    return (count * bits + 7) // 8


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 codes (each < 2**bits) into ceil(len * bits / 8) bytes."""
    _check_width(bits)
    codes = np.asarray(codes, dtype=np.uint8).ravel()
    if bits == 8:
        return codes.copy()
    if bits == 1:
        return np.packbits(codes.view(bool))
    if bits in WORDS:
        per = 8 // bits
        words = _padded(codes, per).view(WORDS[bits])
        spread = sum(1 << ((8 + bits) * (per - 1 - i)) for i in range(per))
        words = words * words.dtype.type(spread)
        words >>= 8 * (per - 1)
        return words.astype(np.uint8)
    group, into_bytes, _ = _layout(bits)
    packed = _recombine(_padded(codes, group).reshape(-1, group), into_bytes)
    return packed.ravel()[: packed_bytes(codes.size, bits)]


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first `count` codes of `bits` bits from a packed stream (uint8)."""
    _check_width(bits)
    packed = np.asarray(packed, dtype=np.uint8).ravel()
    if packed.size < packed_bytes(count, bits):
        raise ValueError(
            f"a stream of {packed.size} bytes cannot hold {count} codes of {bits} bits"
        )
    packed = packed[: packed_bytes(count, bits)]
    if bits == 8:
        return packed.copy()
    if bits == 1:
        return np.unpackbits(packed, count=count)
    mask = (1 << bits) - 1
    if bits in WORDS:
        per, word = 8 // bits, WORDS[bits]
        spread = sum(1 << ((8 + bits) * i) for i in range(per))
        words = packed.astype(word) * word.type(spread)
        words >>= bits * (per - 1)
        words &= word.type(int.from_bytes(bytes([mask] * per), "little"))
        return words.view(np.uint8)[:count]
    group, into_bytes, into_codes = _layout(bits)
    width = len(into_bytes)
    codes = _recombine(_padded(packed, width).reshape(-1, width), into_codes).ravel()[:count]
    codes &= mask
    return codes


Parts = list[list[tuple[int, int]]]  # per output column: (input column, left shift) to OR


@cache
def _layout(bits: int) -> tuple[int, Parts, Parts]:
    """(G codes per group, the parts of each of its bytes, the parts of each of its codes).

    Code i holds stream bits [i k, i k + k) of its group, byte j bits [8 j, 8 j + 8), MSB
    first; where they overlap, code i reaches byte j shifted left by 8 j + 8 - i k - k
    (negative: right), and byte j reaches code i shifted back (high bits masked off after).
    """
    group = 8 // math.gcd(8, bits)
    width = group * bits // 8  # bytes per group
    overlaps = [
        (i, j, 8 * j + 8 - i * bits - bits)
        for i in range(group)
        for j in range(width)
        if max(i * bits, 8 * j) < min((i + 1) * bits, 8 * j + 8)
    ]
    into_bytes = [[(i, shift) for i, j, shift in overlaps if j == byte] for byte in range(width)]
    into_codes = [[(j, -shift) for i, j, shift in overlaps if i == code] for code in range(group)]
    return group, into_bytes, into_codes


def _recombine(rows: np.ndarray, parts: Parts) -> np.ndarray:
    """uint8 columns, column c the OR of the input columns shifted as parts[c] says.

    Works through cache-sized blocks of rows, each input column made contiguous once.
    """
    result = np.empty((rows.shape[0], len(parts)), dtype=np.uint8)
    for start in range(0, rows.shape[0], BLOCK):
        block = rows[start : start + BLOCK]
        sources = [np.ascontiguousarray(block[:, c]) for c in range(rows.shape[1])]
        for column, column_parts in enumerate(parts):
            combined = None
            for source, shift in column_parts:
                part = sources[source] << shift if shift >= 0 else sources[source] >> -shift
                combined = part if combined is None else np.bitwise_or(combined, part, out=combined)
            result[start : start + BLOCK, column] = combined
    return result


def _padded(values: np.ndarray, multiple: int) -> np.ndarray:
    """`values` with zeros appended up to a multiple of `multiple` (a copy only if needed)."""
    extra = -values.size % multiple
    return np.concatenate([values, np.zeros(extra, values.dtype)]) if extra else values


def _check_width(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"code width {bits} is out of range; allowed: 1..8 bits")

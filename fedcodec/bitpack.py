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
    group, width, pieces = _layout(bits)
    columns = _padded(codes, group).reshape(-1, group)
    packed = np.empty((columns.shape[0], width), dtype=np.uint8)
    for start in range(0, columns.shape[0], BLOCK):
        block = columns[start : start + BLOCK]
        sources = [np.ascontiguousarray(block[:, i]) for i in range(group)]
        for byte in range(width):
            packed[start : start + BLOCK, byte] = _gather(sources, pieces[byte])
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
    group, width, pieces = _layout(bits)
    rows = _padded(packed, width).reshape(-1, width)
    codes = np.empty((rows.shape[0], group), dtype=np.uint8)
    for start in range(0, rows.shape[0], BLOCK):
        block = rows[start : start + BLOCK]
        sources = [np.ascontiguousarray(block[:, j]) for j in range(width)]
        for code in range(group):
            reversed_pieces = [(j, -shift) for j, i, shift in _pieces_of(pieces, code)]
            column = _gather(sources, reversed_pieces)
            column &= mask
            codes[start : start + BLOCK, code] = column
    return codes.ravel()[:count]


@cache
def _layout(bits: int) -> tuple[int, int, tuple[tuple[tuple[int, int], ...], ...]]:
    """(G codes, B bytes per group, per byte: (code, left shift) of each overlapping code).

    Code i holds stream bits [i k, i k + k) of its group, byte j bits [8 j, 8 j + 8), MSB
    first; code i reaches byte j shifted left by 8 j + 8 - i k - k (negative: right).
    """
    group = 8 // math.gcd(8, bits)
    width = group * bits // 8
    pieces = tuple(
        tuple(
            (i, 8 * j + 8 - i * bits - bits)
            for i in range(group)
            if max(i * bits, 8 * j) < min((i + 1) * bits, 8 * j + 8)
        )
        for j in range(width)
    )
    return group, width, pieces


def _pieces_of(pieces: tuple, code: int) -> list[tuple[int, int, int]]:
    """(byte, code, shift) of every byte that holds part of `code`."""
    return [(j, i, shift) for j, row in enumerate(pieces) for i, shift in row if i == code]


def _gather(sources: list[np.ndarray], parts) -> np.ndarray:
    """OR of sources[index] shifted left by shift (right when negative), in uint8."""
    result = None
    for index, shift in parts:
        part = sources[index] << shift if shift >= 0 else sources[index] >> -shift
        result = part if result is None else np.bitwise_or(result, part, out=result)
    return result


def _padded(values: np.ndarray, multiple: int) -> np.ndarray:
    """`values` with zeros appended up to a multiple of `multiple` (a copy only if needed)."""
    extra = -values.size % multiple
    return np.concatenate([values, np.zeros(extra, values.dtype)]) if extra else values


def _check_width(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"code width {bits} is out of range; allowed: 1..8 bits")

"""Pack k-bit codes (1 <= k <= 8) into a byte stream, most significant bit first.

The result is bit for bit `np.packbits` of the codes written out k bits each, built with
whole-array shifts instead of one byte per bit: when k divides 8, 8 / k codes share a byte;
otherwise eight codes (8 x k bits) are merged pairwise into a uint64 word whose low k bytes
are the packed group.
"""

from __future__ import annotations

import numpy as np

GROUP = 8  # codes per group when k does not divide 8: 8 x k <= 64 bits


def packed_bytes(count: int, bits: int) -> int:
    """Bytes that `count` codes of `bits` bits occupy once packed."""
    return (count * bits + 7) // 8


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 codes (each < 2**bits) into ceil(len * bits / 8) bytes."""
    _check_width(bits)
    codes = np.asarray(codes, dtype=np.uint8).ravel()
    if bits == 8:
        return codes.copy()
    per = 8 // bits if 8 % bits == 0 else GROUP
    columns = _padded(codes, per).reshape(-1, per)
    if 8 % bits == 0:
        packed = columns[:, 0] << (bits * (per - 1))
        for j in range(1, per):
            packed |= columns[:, j] << (bits * (per - 1 - j))
        return packed
    halves = (columns[:, 0::2].astype(np.uint16) << bits) | columns[:, 1::2]
    quarters = (halves[:, 0::2].astype(np.uint32) << (2 * bits)) | halves[:, 1::2]
    words = (quarters[:, 0].astype(np.uint64) << np.uint64(4 * bits)) | quarters[:, 1]
    word_bytes = words.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 8 - bits :]
    return word_bytes.ravel()[: packed_bytes(codes.size, bits)].copy()


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first `count` codes of `bits` bits from a packed stream (uint8)."""
    _check_width(bits)
    packed = np.asarray(packed, dtype=np.uint8).ravel()
    if packed.size < packed_bytes(count, bits):
        raise ValueError(
            f"a stream of {packed.size} bytes cannot hold {count} codes of {bits} bits"
        )
    if bits == 8:
        return packed[:count].copy()
    mask = (1 << bits) - 1
    if 8 % bits == 0:
        per = 8 // bits
        stream = packed[: -(-count // per)]
        codes = np.empty((stream.size, per), dtype=np.uint8)
        for j in range(per):
            codes[:, j] = (stream >> (bits * (per - 1 - j))) & mask
        return codes.ravel()[:count]
    groups = -(-count // GROUP)
    word_bytes = np.zeros((groups, 8), dtype=np.uint8)
    word_bytes[:, 8 - bits :] = _padded(packed[: packed_bytes(count, bits)], bits).reshape(
        groups, bits
    )
    words = word_bytes.view(">u8").ravel()
    quarters = np.empty((groups, 2), dtype=np.uint32)
    quarters[:, 0] = words >> np.uint64(4 * bits)
    quarters[:, 1] = words & np.uint64((1 << (4 * bits)) - 1)
    halves = np.empty((groups, 4), dtype=np.uint16)
    halves[:, 0::2] = quarters >> (2 * bits)
    halves[:, 1::2] = quarters & ((1 << (2 * bits)) - 1)
    codes = np.empty((groups, GROUP), dtype=np.uint8)
    codes[:, 0::2] = halves >> bits
    codes[:, 1::2] = halves & mask
    return codes.ravel()[:count]


def _padded(values: np.ndarray, multiple: int) -> np.ndarray:
    """`values` with zeros appended up to a multiple of `multiple` (a copy only if needed)."""
    extra = -values.size % multiple
    return np.concatenate([values, np.zeros(extra, values.dtype)]) if extra else values


def _check_width(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"code width {bits} is out of range; allowed: 1..8 bits")

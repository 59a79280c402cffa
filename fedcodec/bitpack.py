"""Pack k-bit codes (1 <= k <= 8) into a byte stream, most significant bit first.

The result is bit for bit `np.packbits` of the codes written out k bits each. Eight codes of
k bits fill exactly k bytes, so both directions work group by group: each byte of a group is the
OR of the shifted codes that overlap it, and each code the OR of the shifted bytes. The loops
are compiled by numba once per width, with the width a constant, so that the shifts fold away
and the group loop runs on vector registers.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numba import njit

GROUP = 8  # codes per group: a group of k-bit codes fills k bytes


def packed_bytes(count: int, bits: int) -> int:
    """Bytes that `count` codes of `bits` bits occupy once packed."""
    return (count * bits + 7) // 8


def pack_codes(codes: np.ndarray, bits: int, shift: int = 0) -> np.ndarray:
    """Pack bits [shift, shift + bits) of each uint8 code into ceil(len * bits / 8) bytes.

    By default the low `bits` bits (the whole code when it is below 2**bits); a shift packs
    higher bits, e.g. the base of a progressive code, without a shifted copy of the codes.
    """
    _check_width(bits)
    if not 0 <= shift <= 8 - bits:
        raise ValueError(f"shift {shift} is out of range; allowed: 0..{8 - bits} for {bits} bits")
    codes = np.ascontiguousarray(codes, dtype=np.uint8).ravel()
    if bits == 8:
        return codes.copy()
    whole = codes.size - codes.size % GROUP
    packed = np.empty(packed_bytes(codes.size, bits), dtype=np.uint8)
    _packer(bits, shift)(codes[:whole], packed)
    packed[whole * bits // 8 :] = np.packbits(_bits_of(codes[whole:] >> shift, bits))
    return packed


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first `count` codes of `bits` bits from a packed stream (uint8)."""
    _check_width(bits)
    packed = np.ascontiguousarray(packed, dtype=np.uint8).ravel()
    if packed.size < packed_bytes(count, bits):
        raise ValueError(
            f"a stream of {packed.size} bytes cannot hold {count} codes of {bits} bits"
        )
    if bits == 8:
        return packed[:count].copy()
    whole = count - count % GROUP
    codes = np.empty(count, dtype=np.uint8)
    _unpacker(bits)(packed, codes[:whole])
    tail = np.unpackbits(packed[whole * bits // 8 :], count=(count - whole) * bits)
    codes[whole:] = _codes_of(tail, bits)
    return codes


def _bits_of(codes: np.ndarray, bits: int) -> np.ndarray:
    """The bits of a few codes, `bits` each, most significant first."""
    return np.unpackbits(codes[:, None], axis=1)[:, 8 - bits :].ravel()


def _codes_of(stream_bits: np.ndarray, bits: int) -> np.ndarray:
    """The codes of a few codes' bits (the inverse of `_bits_of`)."""
    return (stream_bits.reshape(-1, bits) << np.arange(bits - 1, -1, -1, dtype=np.uint8)).sum(
        axis=1, dtype=np.uint8
    )


def _check_width(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"code width {bits} is out of range; allowed: 1..8 bits")


# Code i of a group holds the group's bits [i k, i k + k), byte j its bits [8 j, 8 j + 8);
# where they overlap, code i reaches byte j shifted left by the offset 8 j + 8 - i k - k
# (negative: right), and byte j reaches code i shifted back.


@cache
def _packer(bits: int, shift: int):
    """Packs whole groups of codes; compiled per (width, shift), both constants in the loop."""
    mask = np.uint32((1 << bits) - 1)

    @njit(cache=True, nogil=True)
    def pack(codes, out):
        for group in range(codes.size // GROUP):
            for byte in range(bits):
                value = np.uint32(0)
                for code in range(8 * byte // bits, (8 * byte + 7) // bits + 1):
                    offset = 8 * byte + 8 - bits * code - bits
                    part = (np.uint32(codes[GROUP * group + code]) >> np.uint32(shift)) & mask
                    value |= (
                        part << np.uint32(offset) if offset >= 0 else part >> np.uint32(-offset)
                    )
                out[bits * group + byte] = np.uint8(value & np.uint32(0xFF))

    return pack


@cache
def _unpacker(bits: int):
    """Unpacks whole groups of codes; compiled per width, a constant in the loop."""

    @njit(cache=True, nogil=True)
    def unpack(packed, out):
        mask = np.uint32((1 << bits) - 1)
        for group in range(out.size // GROUP):
            for code in range(GROUP):
                value = np.uint32(0)
                for byte in range(bits * code // 8, (bits * code + bits - 1) // 8 + 1):
                    offset = 8 * byte + 8 - bits * code - bits
                    part = np.uint32(packed[bits * group + byte])
                    value |= (
                        part >> np.uint32(offset) if offset >= 0 else part << np.uint32(-offset)
                    )
                out[GROUP * group + code] = np.uint8(value & mask)

    return unpack

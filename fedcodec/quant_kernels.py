"""Per-entry loops of the quantizers, compiled by numba: one pass over a tensor, no temporaries.

Each `*_codes` kernel turns one tensor's float32 values into uint8 codes (written into `out`);
each `*_values` kernel turns codes back into float32 values. The arithmetic is float32 step by
step, as numpy would do it (no fused multiply-add), so results do not depend on the compiler.

Stochastic rounding draws U[0, 1) per entry from a counter-based generator: a 32-bit integer hash
(Wellons' lowbias32, a bijection with low avalanche bias) of the entry's index XOR a key drawn once
per update from the caller's numpy Generator. Every entry gets its own draw whatever the loop
order, the same Generator state gives the same codes, and it costs a few integer operations
per entry where numpy's Generator spends about 4x a float32 copy on 14 M draws.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numba import njit

HALF = np.float32(0.5)
UNIT = np.float32(2.0**-24)  # 24 random bits -> [0, 1) in steps of 2**-24 (float32's precision)
ROUNDER = np.float32(2.0**23)  # (y + 2**23) - 2**23 rounds 0 <= y < 2**22 half to even
BLOCK = 1 << 12  # entries per block of the minifloat loops (a float32 <-> int32 scratch buffer)
F32_MANTISSA = 23
_M1, _M2 = np.uint32(0x7FEB352D), np.uint32(0x846CA68B)
_S15, _S16, _S8 = np.uint32(15), np.uint32(16), np.uint32(8)


@njit(inline="always")
def _hash(value):  # numba widens uint32 arithmetic to 64 bits: each step is cut back to 32
    value = np.uint32(value ^ (value >> _S16))
    value = np.uint32(value * _M1)
    value = np.uint32(value ^ (value >> _S15))
    value = np.uint32(value * _M2)
    return np.uint32(value ^ (value >> _S16))


@njit(inline="always")
def _random_bits(key, index):
    """32 random bits for entry `index` under `key` (both uint32)."""
    return _hash(np.uint32(np.uint32(index) ^ key))


@njit(inline="always")
def _uniform01(key, index):
    return np.float32(_random_bits(key, index) >> _S8) * UNIT


@njit(cache=True, nogil=True)
def uniform_codes(values, low, step, top, stochastic, key, first, out):
    """c = floor((x - low) / step + 1/2), or + U[0, 1) capped at `top` when stochastic."""
    for i in range(values.size):
        scaled = (values[i] - low) / step
        if stochastic:
            scaled = min(scaled + _uniform01(key, first + i), top)
        else:
            scaled += HALF
        out[i] = np.uint8(scaled)


@njit(cache=True, nogil=True)
def uniform_values(codes, scale, middle, low, step, out):
    """x = (c * scale + middle) * step + low: scale, middle = 1, 0 for a whole code."""
    for i in range(codes.size):
        out[i] = (np.float32(codes[i]) * scale + middle) * step + low


@njit(cache=True, nogil=True)
def progressive_values(base, refine, scale, low, step, out):
    """x = (b * 2**r + f) * step + low: the whole code, exact in float32, from its two parts."""
    for i in range(base.size):
        out[i] = (np.float32(base[i]) * scale + np.float32(refine[i])) * step + low


@njit(cache=True, nogil=True)
def fixed_codes(values, scale, top, stochastic, key, first, out, negative):
    """c = floor(|x| * 2**k) (+ U[0, 1) when stochastic) capped at `top`; the sign apart."""
    for i in range(values.size):
        scaled = abs(values[i]) * scale
        if stochastic:
            scaled += _uniform01(key, first + i)
        out[i] = np.uint8(min(scaled, top))
        negative[i] = values[i] < 0


@njit(cache=True, nogil=True)
def fixed_values(codes, negative, scale, out):
    for i in range(codes.size):
        value = np.float32(codes[i]) * scale
        out[i] = -value if negative[i] else value


def _float_constants(e: int, m: int) -> tuple:
    """The shifts, masks and scales of the code with an e-bit exponent and an m-bit mantissa."""
    low = -((1 << e) - 2)  # the exponent of the smallest normal, 2**low
    shift, width = np.int32(F32_MANTISSA - m), e + m
    return (
        shift,
        width,
        np.uint32(32 - shift),  # random_shift
        np.int32((1 << shift >> 1) - 1),  # half
        np.int32((126 + low) << F32_MANTISSA),  # rebias: float32 exponent field -> the code's
        np.int32((127 + low) << F32_MANTISSA),  # smallest_normal: the pattern of 2**low
        np.int32((1 << width) - 1),  # largest
        np.int32(1 << m),  # smallest_normal_code
        np.int32(1 << width),  # sign_bit
        np.uint32((1 << width) - 1),  # magnitude
        np.float32(2.0 ** (m - low)),  # subnormal_scale
    )


@cache
def float_kernels(e: int, m: int):
    """(codes, values) kernels of the code with an e-bit exponent and an m-bit mantissa.

    Compiled once per (e, m) with the widths as constants: numba widens int32 arithmetic to
    int64, which runs fast only where shifts and masks are constants (the code pass took 3.0x
    a float32 copy with e and m as arguments, 1.2x as constants).
    """
    constants = _float_constants(e, m)  # numba compiles them in as constants
    shift, width, random_shift, half, rebias, smallest_normal = constants[:6]
    largest, smallest_normal_code, sign_bit, magnitude, subnormal_scale = constants[6:]

    @njit(cache=True, nogil=True)
    def codes(values, scale, scale2, stochastic, key, first, out):
        """Sign, exponent and mantissa of |x| * scale * scale2 (2**-top; see quant.py).

        The float32 pattern's mantissa rounded to m bits by an integer add carries into the
        exponent by itself; patterns below 2**low are coded as subnormal steps of
        2**(low - m), rounded half to even by adding and taking away 2**23.
        """
        scaled = np.empty(BLOCK, np.float32)
        patterns = scaled.view(np.int32)
        for start in range(0, values.size, BLOCK):
            block = values[start : start + BLOCK]
            signs, block_codes = block.view(np.int32), out[start : start + BLOCK]
            for j in range(block.size):
                scaled[j] = abs(block[j]) * scale * scale2
            for j in range(block.size):
                pattern = patterns[j]
                steps = scaled[j] * subnormal_scale
                if stochastic:
                    bits = _random_bits(key, first + start + j)
                    normal = np.int32(pattern + np.int32(bits >> random_shift) - rebias) >> shift
                    subnormal = np.int32(steps + np.float32(bits >> _S8) * UNIT)  # floor
                else:
                    normal = np.int32(pattern + ((pattern >> shift) & 1) + half - rebias) >> shift
                    subnormal = np.int32((steps + ROUNDER) - ROUNDER)
                normal = min(np.int32(normal), largest)
                subnormal = min(subnormal, smallest_normal_code)
                code = subnormal if pattern < smallest_normal else normal
                block_codes[j] = np.uint8(code | (sign_bit & (signs[j] >> 31)))

    @njit(cache=True, nogil=True)
    def values(codes, scale, scale2, out):
        """Exponent and mantissa go into the float32 pattern's lowest exponent and top
        mantissa bits: (1 + f) 2**(E - 127), and for E = 0 a float32 subnormal f 2**-126;
        scale * scale2 = 2**(126 + offset) makes them (1 + f) 2**(E - 1 + offset) and
        f 2**offset, as coded.
        """
        patterns = np.empty(BLOCK, np.uint32)
        unscaled = patterns.view(np.float32)
        for start in range(0, codes.size, BLOCK):
            block, block_values = codes[start : start + BLOCK], out[start : start + BLOCK]
            for j in range(block.size):
                code = np.uint32(block[j])
                sign = (code >> np.uint32(width)) << np.uint32(31)
                patterns[j] = ((code & magnitude) << np.uint32(shift)) | sign
            for j in range(block.size):
                block_values[j] = unscaled[j] * scale * scale2

    return codes, values

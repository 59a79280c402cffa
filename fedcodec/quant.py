"""Quantizers of a model update: k-bit uniform, fixed-point fraction, progressive, minifloat.

Every scheme writes one code per entry, all tensors back to back, packed MSB first
(`fedcodec.bitpack`), plus a small per-tensor header. What travels:

| scheme | arrays | payload_bits (N entries, T tensors) |
|---|---|---|
| `uniform` (k bits) | `codes`, `lows` (float32 T), `steps` (float32 T) | N k + 64 T |
| `fixed` (k bits) | `signs` (1 bit each), `codes` | N (k + 1) |
| `progressive` (b1 + b2) | `base`, `refine`, `lows`, `steps` | N b1 + 64 T, + N b2 |
| `float` (e, m) | `codes` (1 + e + m bits each), `offsets` (int32 T) | N (1 + e + m) + 32 T |

`uniform`: x -> lo + c * step, step = (max - min) / (2**k - 1), c rounded to nearest (halves
up) or stochastically (floor after adding U[0, 1): unbiased). `fixed` (the first source
document's code): sign and floor(|x| * 2**k) / 2**k, magnitudes of 1 or more saturating at
1 - 2**-k; no scale, so entries below 2**-k vanish. `progressive`: the (b1 + b2)-bit uniform
code split into its high b1 bits (the base) and its low b2 bits (the refinement, i.e. the base's
remaining error quantized to b2 bits); the base alone decodes to the middle of its bucket.
`float`: sign, e-bit exponent, m-bit mantissa (rounded to nearest, ties to even, or
stochastically) with subnormals and no inf/NaN codes; the per-tensor exponent offset puts the
tensor's largest magnitude in the top binade, so the e bits cover the weights' wide dynamic
range wherever it sits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedcodec.bitpack import pack_codes, unpack_codes
from fedcodec.encoded import Encoded
from fedcodec.flat import unflatten

ARRAYS = {
    "uniform": ("codes", "lows", "steps"),
    "fixed": ("signs", "codes"),
    "progressive": ("base", "refine", "lows", "steps"),
    "float": ("codes", "offsets"),
}
SCHEMES = tuple(ARRAYS)
CODE_BITS = 8  # the widest code a scheme may use per entry
SCALE_HEADER_BITS = 32 + 32  # float32 low + float32 step per tensor
OFFSET_HEADER_BITS = 32  # int32 exponent offset per tensor


@dataclass(frozen=True)
class QuantSpec:
    """Which quantizer and its widths; `validate` says what is out of range."""

    scheme: str = "uniform"
    bits: int = 8  # uniform, fixed
    base_bits: int = 2  # progressive
    refine_bits: int = 6  # progressive
    exponent_bits: int = 4  # float
    mantissa_bits: int = 3  # float
    stochastic: bool = False

    def validate(self) -> QuantSpec:
        """Return self, or raise ValueError naming the setting and what is allowed."""
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme '{self.scheme}' is not known; allowed: {', '.join(SCHEMES)}")
        if not 1 <= self.bits <= CODE_BITS:
            raise ValueError(f"bits={self.bits} is out of range; allowed: 1..{CODE_BITS}")
        if self.base_bits < 1 or self.refine_bits < 1:
            raise ValueError("base and refinement need at least 1 bit each")
        if self.base_bits + self.refine_bits > CODE_BITS:
            raise ValueError(
                f"base {self.base_bits} + refinement {self.refine_bits} bits exceed a "
                f"{CODE_BITS}-bit code; allowed: base + refinement <= {CODE_BITS}"
            )
        if self.exponent_bits < 1 or self.mantissa_bits < 0:
            raise ValueError("a float code needs exponent bits >= 1 and mantissa bits >= 0")
        if 1 + self.exponent_bits + self.mantissa_bits > CODE_BITS:
            raise ValueError(
                f"1 sign + {self.exponent_bits} exponent + {self.mantissa_bits} mantissa bits "
                f"exceed a {CODE_BITS}-bit code; allowed: 1 + e + m <= {CODE_BITS}"
            )
        return self

    @property
    def label(self) -> str:
        """The codec name logged in bandwidth.csv, e.g. `uniform4`, `float-e4m3`."""
        if self.scheme == "progressive":
            return f"progressive{self.base_bits}+{self.refine_bits}"
        if self.scheme == "float":
            return f"float-e{self.exponent_bits}m{self.mantissa_bits}"
        return f"{self.scheme}{self.bits}"

    @property
    def refined_arrays(self) -> tuple[str, ...]:
        """Arrays that may arrive late or never (decoding falls back to the base)."""
        return ("refine",) if self.scheme == "progressive" else ()


def encode(
    tensors: list[np.ndarray], spec: QuantSpec, rng: np.random.Generator | None = None
) -> Encoded:
    """Quantize a list of tensors; the inputs are never modified.

    Raises
    ------
    ValueError
        For an invalid spec, stochastic rounding without an rng, or NaN / inf in a tensor.
    """
    spec.validate()
    if spec.stochastic and rng is None:
        raise ValueError("stochastic rounding needs an rng")
    flats = [np.asarray(tensor, dtype=np.float32).ravel() for tensor in tensors]
    ranges = np.zeros((len(flats), 2), dtype=np.float32)  # min and max of each tensor
    for index, flat in enumerate(flats):
        if flat.size:
            ranges[index] = flat.min(), flat.max()  # NaN propagates; inf shows here too
    bad = np.flatnonzero(~np.isfinite(ranges).all(axis=1))
    if bad.size:
        raise ValueError(f"tensor {bad[0]} holds NaN or inf; refusing to quantize it")
    rounding = rng if spec.stochastic else None
    if spec.scheme == "fixed":
        return _encode_fixed(flats, spec.bits, rounding)
    if spec.scheme == "float":
        return _encode_float(flats, ranges, spec.exponent_bits, spec.mantissa_bits, rounding)
    if spec.scheme == "uniform":
        codes, lows, steps = _uniform_codes(flats, ranges, spec.bits, rounding)
        arrays = {"codes": pack_codes(codes, spec.bits), "lows": lows, "steps": steps}
        return Encoded(arrays, codes.size * spec.bits + SCALE_HEADER_BITS * len(flats))
    total = spec.base_bits + spec.refine_bits
    codes, lows, steps = _uniform_codes(flats, ranges, total, rounding)
    arrays = {
        "base": pack_codes(codes >> spec.refine_bits, spec.base_bits),
        "refine": pack_codes(codes & ((1 << spec.refine_bits) - 1), spec.refine_bits),
        "lows": lows,
        "steps": steps,
    }
    return Encoded(arrays, codes.size * total + SCALE_HEADER_BITS * len(flats))


def decode(encoded: Encoded, shapes: list[tuple[int, ...]], spec: QuantSpec) -> list[np.ndarray]:
    """Rebuild float32 tensors of the given shapes."""
    return decode_arrays(encoded.arrays, shapes, spec)[0]


def decode_arrays(
    arrays: dict[str, np.ndarray], shapes: list[tuple[int, ...]], spec: QuantSpec
) -> tuple[list[np.ndarray], int]:
    """Decode the arrays that arrived; return the tensors and the exact payload bits used.

    A progressive update without its `refine` array decodes from the base alone.
    """
    sizes = [math.prod(shape) for shape in shapes]
    count = sum(sizes)
    if spec.scheme == "fixed":
        signs = np.unpackbits(_stream(arrays, "signs", count), count=count).view(bool)
        codes = unpack_codes(_get(arrays, "codes"), spec.bits, count)
        scale = np.float32(2.0**-spec.bits)

        def fixed_values(index: int, part: slice, out: np.ndarray) -> None:
            np.multiply(codes[part], scale, out=out)
            sign_bits = np.left_shift(signs[part], 31, dtype=np.uint32)
            np.bitwise_or(out.view(np.uint32), sign_bits, out=out.view(np.uint32))

        return unflatten(_values(sizes, fixed_values), shapes), count * (spec.bits + 1)
    if spec.scheme == "float":
        width = 1 + spec.exponent_bits + spec.mantissa_bits
        codes = unpack_codes(_get(arrays, "codes"), width, count)
        offsets = _header(arrays, "offsets", len(shapes))
        values = _float_values(codes, offsets, sizes, spec.exponent_bits, spec.mantissa_bits)
        return unflatten(values, shapes), count * width + OFFSET_HEADER_BITS * len(shapes)
    lows, steps = _header(arrays, "lows", len(shapes)), _header(arrays, "steps", len(shapes))
    header_bits = SCALE_HEADER_BITS * len(shapes)
    if spec.scheme == "uniform":
        levels = unpack_codes(_get(arrays, "codes"), spec.bits, count)
        shift, middle, bits = 0, 0.0, count * spec.bits + header_bits
    elif "refine" in arrays:
        levels = unpack_codes(_get(arrays, "base"), spec.base_bits, count) << spec.refine_bits
        levels |= unpack_codes(arrays["refine"], spec.refine_bits, count)
        shift, middle = 0, 0.0
        bits = count * (spec.base_bits + spec.refine_bits) + header_bits
    else:  # the base alone: the middle of its bucket of 2**refine_bits codes
        levels = unpack_codes(_get(arrays, "base"), spec.base_bits, count)
        shift, middle = spec.refine_bits, ((1 << spec.refine_bits) - 1) / 2
        bits = count * spec.base_bits + header_bits

    def uniform_values(index: int, part: slice, out: np.ndarray) -> None:
        out[:] = levels[part]
        if shift:
            out *= np.float32(1 << shift)
            out += np.float32(middle)
        out *= steps[index]
        out += lows[index]

    return unflatten(_values(sizes, uniform_values), shapes), bits


def array_names(spec: QuantSpec) -> tuple[str, ...]:
    """The arrays an encoding under `spec` sends."""
    return ARRAYS[spec.scheme]


def drop_refinement(arrays: dict[str, np.ndarray], spec: QuantSpec) -> dict[str, np.ndarray]:
    """The arrays without the ones that may arrive late (the base-only update)."""
    return {name: value for name, value in arrays.items() if name not in spec.refined_arrays}


def compress(
    tensors: list[np.ndarray], spec: QuantSpec, rng: np.random.Generator | None = None
) -> list[np.ndarray]:
    """decode(encode(...)): what the receiver reconstructs."""
    return decode(encode(tensors, spec, rng), [np.shape(t) for t in tensors], spec)


# ------------------------------------------------------------------ chunked loops
#
# Entries are coded and decoded in chunks of CHUNK so that the temporaries of each step stay
# in cache instead of costing a fresh 56 MB allocation per step on a 14 M-entry update.

CHUNK = 1 << 16


def _codes(flats: list[np.ndarray], code_chunk) -> np.ndarray:
    """uint8 codes of all entries; `code_chunk(index, values, out)` codes one chunk."""
    codes = np.empty(sum(flat.size for flat in flats), dtype=np.uint8)
    start = 0
    for index, flat in enumerate(flats):
        for offset in range(0, flat.size, CHUNK):
            values = flat[offset : offset + CHUNK]
            code_chunk(index, values, codes[start + offset : start + offset + values.size])
        start += flat.size
    return codes


def _values(sizes: list[int], value_chunk) -> np.ndarray:
    """float32 values of all entries; `value_chunk(index, part, out)` decodes one chunk."""
    values = np.empty(sum(sizes), dtype=np.float32)
    start = 0
    for index, size in enumerate(sizes):
        for offset in range(start, start + size, CHUNK):
            part = slice(offset, min(offset + CHUNK, start + size))
            value_chunk(index, part, values[part])
        start += size
    return values


def _add_rounding(values: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """Add 0.5 (round half up) or U[0, 1) (unbiased stochastic rounding) in place."""
    if rng is None:
        values += np.float32(0.5)
    else:
        values += rng.random(values.size, dtype=np.float32)
    return values


# ------------------------------------------------------------------ uniform and fixed


def _uniform_codes(
    flats: list[np.ndarray], ranges: np.ndarray, bits: int, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes in 0..2**bits - 1 of every entry, and each tensor's low and step."""
    top = (1 << bits) - 1
    lows = ranges[:, 0].copy()
    steps = (ranges[:, 1] - ranges[:, 0]) / np.float32(top)

    def code_chunk(index: int, values: np.ndarray, out: np.ndarray) -> None:
        if steps[index] == 0:
            out[:] = 0
            return
        scaled = values - lows[index]
        scaled /= steps[index]
        _add_rounding(scaled, rng)
        if rng is not None:  # (max - min) / step may exceed top by an ulp; a draw near 1 then
            np.minimum(scaled, np.float32(top), out=scaled)  # would floor to top + 1
        out[:] = scaled  # in [0, top + 1): truncation is floor

    return _codes(flats, code_chunk), lows, steps


def _encode_fixed(flats: list[np.ndarray], bits: int, rng: np.random.Generator | None) -> Encoded:
    scale = np.float32(1 << bits)

    def code_chunk(index: int, values: np.ndarray, out: np.ndarray) -> None:
        scaled = np.abs(values)
        scaled *= scale
        if rng is not None:
            _add_rounding(scaled, rng)
        np.minimum(scaled, np.float32((1 << bits) - 1), out=scaled)  # saturate at 1 - 2**-k
        out[:] = scaled  # truncation: the source's floor

    codes = _codes(flats, code_chunk)
    negative = np.empty(codes.size, dtype=bool)
    start = 0
    for flat in flats:
        np.less(flat, 0, out=negative[start : start + flat.size])
        start += flat.size
    arrays = {"signs": np.packbits(negative), "codes": pack_codes(codes, bits)}
    return Encoded(arrays, codes.size * (bits + 1))


# ------------------------------------------------------------------ minifloat
#
# A tensor is scaled by 2**-top (top: the exponent of its largest magnitude, so that magnitudes
# lie in [0, 2)); its exponents then run from LOW = -(2**e - 2) to 0. Codes are built from the
# float32 bit pattern: rounding the 23-bit mantissa to m bits with integer adds carries into the
# exponent by itself, and the pattern's biased exponent minus (126 + LOW) is the exponent field.
# Magnitudes below 2**LOW are subnormal: multiples of 2**(LOW - m). The offset sent per tensor
# is top + LOW, the exponent of the smallest normal.

F32_MANTISSA = 23
F32_BIAS = 127


def _encode_float(
    flats: list[np.ndarray], ranges: np.ndarray, e: int, m: int, rng: np.random.Generator | None
) -> Encoded:
    width, low, shift = 1 + e + m, -((1 << e) - 2), F32_MANTISSA - m
    largest = np.abs(ranges).max(axis=1) if len(flats) else np.zeros(0, np.float32)
    tops = [int(np.frexp(value)[1]) - 1 if value > 0 else 0 for value in largest]
    offsets = np.array([top + low for top in tops], dtype=np.int32)

    rebias = (F32_BIAS - 1 + low) << F32_MANTISSA  # float32 exponent field -> the code's
    smallest_normal = (F32_BIAS + low) << F32_MANTISSA  # the pattern of 2**low

    def code_chunk(index: int, values: np.ndarray, out: np.ndarray) -> None:
        scaled = _times_power_of_two(np.abs(values), -tops[index])
        pattern = scaled.view(np.int32)
        if rng is None:  # round the mantissa to nearest, ties to even
            code = (pattern >> shift) & 1
            code += (1 << (shift - 1)) - 1 - rebias
        else:
            code = rng.integers(0, 1 << shift, pattern.size, dtype=np.int32)
            code -= rebias
        code += pattern
        code >>= shift
        np.minimum(code, (1 << (e + m)) - 1, out=code)  # saturate at the largest code
        subnormal = np.flatnonzero(pattern < smallest_normal)
        if subnormal.size:  # multiples of 2**(low - m), in subnormal steps
            steps = scaled[subnormal] * np.float32(2.0 ** (m - low))
            steps = np.rint(steps) if rng is None else np.floor(_add_rounding(steps, rng))
            code[subnormal] = np.minimum(steps, 1 << m)  # 1 << m: the smallest normal
        code |= (values.view(np.int32) >> 31) & (1 << (e + m))  # the sign bit
        out[:] = code

    codes = _codes(flats, code_chunk)
    arrays = {"codes": pack_codes(codes, width), "offsets": offsets}
    return Encoded(arrays, codes.size * width + OFFSET_HEADER_BITS * len(flats))


def _float_values(
    codes: np.ndarray, offsets: np.ndarray, sizes: list[int], e: int, m: int
) -> np.ndarray:
    def value_chunk(index: int, part: slice, out: np.ndarray) -> None:
        # exponent and mantissa bits in the float32 pattern's lowest exponent and top mantissa
        # bits: (1 + f) 2**(E - 127), and for E = 0 a float32 subnormal f 2**-126; scaling by
        # 2**(126 + offset) gives (1 + f) 2**(E - 1 + offset) and f 2**offset, as coded
        code = codes[part].astype(np.uint32)
        pattern = code & ((1 << (e + m)) - 1)
        pattern <<= F32_MANTISSA - m
        code >>= e + m
        code <<= 31  # the sign bit
        pattern |= code
        out[:] = _times_power_of_two(pattern.view(np.float32), F32_BIAS - 1 + int(offsets[index]))

    return _values(sizes, value_chunk)


def _times_power_of_two(values: np.ndarray, exponent: int) -> np.ndarray:
    """values x 2**exponent in float32 (exact unless the result leaves float32's range)."""
    if exponent == 0:
        return values
    if -126 <= exponent <= 127:
        return values * np.float32(2.0**exponent)
    return np.ldexp(values, exponent).astype(np.float32)


# ------------------------------------------------------------------ helpers


def _get(arrays: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name not in arrays:
        raise ValueError(f"the quantized update lacks its '{name}' array")
    return np.asarray(arrays[name])


def _stream(arrays: dict[str, np.ndarray], name: str, bits: int) -> np.ndarray:
    values = _get(arrays, name)
    if values.size * 8 < bits:
        raise ValueError(f"'{name}' holds {values.size * 8} bits; {bits} expected")
    return values


def _header(arrays: dict[str, np.ndarray], name: str, tensors: int) -> np.ndarray:
    values = _get(arrays, name)
    if values.shape != (tensors,):
        raise ValueError(f"'{name}' has shape {values.shape}; the model has {tensors} tensors")
    return values

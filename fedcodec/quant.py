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

The per-entry loops are numba kernels (`fedcodec.quant_kernels`); this module lays the tensors
out, computes the per-tensor headers and packs the codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from fedcodec import quant_kernels as kernels
from fedcodec.bitpack import pack_codes, unpack_codes
from fedcodec.checks import DecodeError, decoder, expect_names, typed
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
OFFSETS = (-275, 128)  # offsets whose 2**(126 + offset) is a float32 power of two (or 2**128)


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
    rounding = _Rounding(
        spec.stochastic, np.uint32(rng.integers(1 << 32) if spec.stochastic else 0)
    )
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
        "base": pack_codes(codes, spec.base_bits, shift=spec.refine_bits),  # the high bits
        "refine": pack_codes(codes, spec.refine_bits),  # the low bits
        "lows": lows,
        "steps": steps,
    }
    return Encoded(arrays, codes.size * total + SCALE_HEADER_BITS * len(flats))


def decode(encoded: Encoded, shapes: list[tuple[int, ...]], spec: QuantSpec) -> list[np.ndarray]:
    """Rebuild float32 tensors of the given shapes."""
    return decode_arrays(encoded.arrays, shapes, spec)[0]


@decoder
def decode_arrays(
    arrays: dict[str, np.ndarray], shapes: list[tuple[int, ...]], spec: QuantSpec
) -> tuple[list[np.ndarray], int]:
    """Decode the arrays that arrived; return the tensors and the exact payload bits used.

    A progressive update without its `refine` array decodes from the base alone. Raises
    DecodeError for malformed arrays.
    """
    names = ARRAYS[spec.scheme]
    if not set(names) - set(spec.refined_arrays) <= set(arrays) <= set(names):
        expect_names(arrays, names, f"{spec.scheme} quantized")
    sizes = [math.prod(shape) for shape in shapes]
    count = sum(sizes)
    if spec.scheme == "fixed":
        negative = unpack_codes(_stream(arrays, "signs", count), 1, count)
        codes = unpack_codes(_get(arrays, "codes"), spec.bits, count)
        scale = np.float32(2.0**-spec.bits)

        def fixed_values(index: int, part: slice, out: np.ndarray) -> None:
            kernels.fixed_values(codes[part], negative[part], scale, out)

        return unflatten(_values(sizes, fixed_values), shapes), count * (spec.bits + 1)
    if spec.scheme == "float":
        width = 1 + spec.exponent_bits + spec.mantissa_bits
        codes = unpack_codes(_get(arrays, "codes"), width, count)
        offsets = typed(arrays, "offsets", np.int32, len(shapes))
        if offsets.size and not (OFFSETS[0] <= offsets.min() and offsets.max() <= OFFSETS[1]):
            raise DecodeError(f"'offsets' {offsets.tolist()} outside {OFFSETS[0]}..{OFFSETS[1]}")
        values = _float_values(codes, offsets, sizes, spec.exponent_bits, spec.mantissa_bits)
        return unflatten(values, shapes), count * width + OFFSET_HEADER_BITS * len(shapes)
    lows, steps = _header(arrays, "lows", len(shapes)), _header(arrays, "steps", len(shapes))
    refine = None
    if spec.scheme == "uniform":
        levels = unpack_codes(_get(arrays, "codes"), spec.bits, count)
        scale, bits = 1, count * spec.bits
    else:
        levels = unpack_codes(_get(arrays, "base"), spec.base_bits, count)
        scale, bits = 1 << spec.refine_bits, count * spec.base_bits
        if "refine" in arrays:
            refine = unpack_codes(_get(arrays, "refine"), spec.refine_bits, count)
            bits += count * spec.refine_bits
    # a whole code is c * 1 + 0; a base alone decodes to the middle of its 2**r codes
    middle = np.float32(0.0 if spec.scheme == "uniform" else (scale - 1) / 2)
    scale = np.float32(scale)

    def values(index: int, part: slice, out: np.ndarray) -> None:
        low, step = lows[index], steps[index]
        if refine is None:
            kernels.uniform_values(levels[part], scale, middle, low, step, out)
        else:
            kernels.progressive_values(levels[part], refine[part], scale, low, step, out)

    return unflatten(_values(sizes, values), shapes), bits + SCALE_HEADER_BITS * len(shapes)


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


# ------------------------------------------------------------------ per-tensor loops


class _Rounding(NamedTuple):
    """Stochastic or not, and the key of the per-entry draws (fedcodec.quant_kernels)."""

    stochastic: bool
    key: np.uint32


def _parts(sizes: list[int]) -> list[slice]:
    """Each tensor's slice of the entries laid back to back."""
    ends = np.cumsum([0, *sizes]).tolist()
    return [slice(start, end) for start, end in zip(ends[:-1], ends[1:], strict=True)]


def _code_buffer(flats: list[np.ndarray]) -> tuple[np.ndarray, list[slice]]:
    """An empty uint8 code per entry, and each tensor's slice of it."""
    sizes = [flat.size for flat in flats]
    return np.empty(sum(sizes), dtype=np.uint8), _parts(sizes)


def _values(sizes: list[int], value_part) -> np.ndarray:
    """float32 values of all entries; `value_part(index, part, out)` decodes one tensor."""
    values = np.empty(sum(sizes), dtype=np.float32)
    for index, part in enumerate(_parts(sizes)):
        value_part(index, part, values[part])
    return values


# ------------------------------------------------------------------ uniform and fixed


def _uniform_codes(
    flats: list[np.ndarray], ranges: np.ndarray, bits: int, rounding: _Rounding
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes in 0..2**bits - 1 of every entry, and each tensor's low and step."""
    top = np.float32((1 << bits) - 1)
    lows = ranges[:, 0].copy()
    steps = (ranges[:, 1] - ranges[:, 0]) / top
    codes, parts = _code_buffer(flats)
    for index, part in enumerate(parts):
        if steps[index] == 0:
            codes[part] = 0
            continue
        low, step = lows[index], steps[index]
        kernels.uniform_codes(flats[index], low, step, top, *rounding, part.start, codes[part])
    return codes, lows, steps


def _encode_fixed(flats: list[np.ndarray], bits: int, rounding: _Rounding) -> Encoded:
    codes, parts = _code_buffer(flats)
    negative = np.empty(codes.size, dtype=bool)
    scale, top = np.float32(1 << bits), np.float32((1 << bits) - 1)  # saturate at 1 - 2**-k
    for flat, part in zip(flats, parts, strict=True):
        kernels.fixed_codes(flat, scale, top, *rounding, part.start, codes[part], negative[part])
    arrays = {"signs": np.packbits(negative), "codes": pack_codes(codes, bits)}
    return Encoded(arrays, codes.size * (bits + 1))


# ------------------------------------------------------------------ minifloat
#
# A tensor is scaled by 2**-top (top: the exponent of its largest magnitude, so that magnitudes
# lie in [0, 2)); its exponents then run from LOW = -(2**e - 2) to 0, magnitudes below 2**LOW
# being subnormal multiples of 2**(LOW - m). The offset sent per tensor is top + LOW, the
# exponent of the smallest normal.


def _encode_float(
    flats: list[np.ndarray], ranges: np.ndarray, e: int, m: int, rounding: _Rounding
) -> Encoded:
    width, low = 1 + e + m, -((1 << e) - 2)
    largest = np.abs(ranges).max(axis=1) if len(flats) else np.zeros(0, np.float32)
    tops = [int(np.frexp(value)[1]) - 1 if value > 0 else 0 for value in largest]
    offsets = np.array([top + low for top in tops], dtype=np.int32)
    codes, parts = _code_buffer(flats)
    float_codes = kernels.float_kernels(e, m)[0]
    for index, part in enumerate(parts):
        scales = _power_of_two(-tops[index])
        float_codes(flats[index], *scales, *rounding, part.start, codes[part])
    arrays = {"codes": pack_codes(codes, width), "offsets": offsets}
    return Encoded(arrays, codes.size * width + OFFSET_HEADER_BITS * len(flats))


def _float_values(
    codes: np.ndarray, offsets: np.ndarray, sizes: list[int], e: int, m: int
) -> np.ndarray:
    float_values = kernels.float_kernels(e, m)[1]

    def value_part(index: int, part: slice, out: np.ndarray) -> None:
        float_values(codes[part], *_power_of_two(126 + int(offsets[index])), out)

    return _values(sizes, value_part)


def _power_of_two(exponent: int) -> tuple[np.float32, np.float32]:
    """Two float32 factors whose product is 2**exponent (-149 <= exponent <= 254).

    x * first * second is x * 2**exponent rounded once: a factor down to 2**-149 (subnormal)
    is still a power of two, and beyond 2**127 the first factor scales up exactly.
    """
    first = min(exponent, 127)
    return np.float32(2.0**first), np.float32(2.0 ** (exponent - first))


# ------------------------------------------------------------------ helpers


def _get(arrays: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A packed code stream (uint8)."""
    return typed(arrays, name, np.uint8)


def _stream(arrays: dict[str, np.ndarray], name: str, bits: int) -> np.ndarray:
    values = _get(arrays, name)
    if values.size * 8 < bits:
        raise DecodeError(f"'{name}' holds {values.size * 8} bits; {bits} expected")
    return values


def _header(arrays: dict[str, np.ndarray], name: str, tensors: int) -> np.ndarray:
    """A float32 value per tensor (lows, steps)."""
    return typed(arrays, name, np.float32, tensors)

"""Quantizers: hand-computed bits and values, the source's fixed-point table, properties."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedcodec import quant
from fedcodec.bitpack import pack_codes, unpack_codes
from fedcodec.checks import DecodeError
from fedcodec.quant import QuantSpec

UNIFORM8 = QuantSpec("uniform", bits=8)
E4M3 = QuantSpec("float", exponent_bits=4, mantissa_bits=3)


def test_bit_packing_matches_numpy_packbits():
    # 3-bit codes 5, 1, 7 -> 101 001 111 -> 10100111 1(0000000) -> bytes 167, 128
    assert pack_codes(np.array([5, 1, 7]), 3).tolist() == [0b10100111, 0b10000000]
    rng = np.random.default_rng(0)
    for bits in range(1, 9):
        for count in (0, 1, 7, 8, 9, 1001):
            codes = rng.integers(0, 1 << bits, count).astype(np.uint8)
            bit_matrix = np.unpackbits(codes[:, None], axis=1)[:, 8 - bits :]
            packed = pack_codes(codes, bits)
            np.testing.assert_array_equal(packed, np.packbits(bit_matrix.ravel()))
            np.testing.assert_array_equal(unpack_codes(packed, bits, count), codes)


def test_bit_packing_of_high_bits():
    # 0b10110110, 0b01000001 packed 2 bits from bit 6: 10, 01 -> 1001(0000) = 144; from bit 0
    # (the default) 3 bits: 110, 001 -> 110001(00) = 196
    codes = np.array([0b10110110, 0b01000001], np.uint8)
    assert pack_codes(codes, 2, shift=6).tolist() == [0b10010000]
    assert pack_codes(codes, 3).tolist() == [0b11000100]
    many = np.random.default_rng(1).integers(0, 256, 1001).astype(np.uint8)
    np.testing.assert_array_equal(pack_codes(many, 3, shift=5), pack_codes(many >> 5, 3))
    with pytest.raises(ValueError, match="shift 6 is out of range; allowed: 0..5 for 3 bits"):
        pack_codes(many, 3, shift=6)


def test_thousand_values_at_8_bits_cost_8000_bits_plus_header():
    # Prepare: 1000 values in one tensor; header = float32 low + float32 step = 64 bits
    values = np.linspace(-1, 3, 1000, dtype=np.float32)
    # Execute
    encoded = quant.encode([values], UNIFORM8)
    # Assert
    assert encoded.payload_bits == 8000 + 64
    assert encoded.arrays["codes"].nbytes == 1000
    assert encoded.arrays["lows"].tolist() == [-1.0]
    assert encoded.arrays["steps"].tolist() == [pytest.approx(4 / 255)]


def test_uniform_2_bits_by_hand():
    # range [0, 3] at 2 bits: step 1, codes = x rounded half up: 0.4 -> 0, 1.5 -> 2, 2.6 -> 3
    x = np.array([0.0, 0.4, 1.5, 2.6, 3.0], np.float32)
    encoded = quant.encode([x], QuantSpec("uniform", bits=2))
    assert unpack_codes(encoded.arrays["codes"], 2, 5).tolist() == [0, 0, 2, 3, 3]
    assert encoded.payload_bits == 5 * 2 + 64
    (decoded,) = quant.decode(encoded, [(5,)], QuantSpec("uniform", bits=2))
    assert decoded.tolist() == [0.0, 0.0, 2.0, 3.0, 3.0]


def test_fixed_point_table_of_the_source():
    # 0.825 at 1, 2, 3, 4 bits gives 0.5, 0.75, 0.75, 0.8125 (codes 1, 11, 110, 1101)
    values, codes = [], []
    for bits in (1, 2, 3, 4):
        spec = QuantSpec("fixed", bits=bits)
        encoded = quant.encode([np.array([0.825, -0.825], np.float32)], spec)
        values.append(quant.decode(encoded, [(2,)], spec)[0].tolist())
        codes.append(unpack_codes(encoded.arrays["codes"], bits, 2)[0])
        assert encoded.payload_bits == 2 * (bits + 1)  # sign + k fraction bits, no header
    assert values == [[0.5, -0.5], [0.75, -0.75], [0.75, -0.75], [0.8125, -0.8125]]
    assert codes == [0b1, 0b11, 0b110, 0b1101]


def test_fixed_point_saturates_and_truncates():
    spec = QuantSpec("fixed", bits=3)
    x = np.array([1.7, -2.0, 0.1, 0.0], np.float32)  # 0.1 < 1/8 truncates to 0
    assert quant.compress([x], spec)[0].tolist() == [0.875, -0.875, 0.0, 0.0]


def test_progressive_base_plus_refinement_is_the_full_code_bit_for_bit():
    # Prepare
    x = np.random.default_rng(1).normal(size=(37, 3)).astype(np.float32)
    spec = QuantSpec("progressive", base_bits=2, refine_bits=6)
    # Execute
    progressive = quant.encode([x], spec)
    full = quant.encode([x], UNIFORM8)
    # Assert: the 8-bit code is base (high 2 bits) then refinement (low 6 bits)
    base = unpack_codes(progressive.arrays["base"], 2, x.size).astype(np.uint16)
    refine = unpack_codes(progressive.arrays["refine"], 6, x.size)
    combined = (base << 6) | refine
    np.testing.assert_array_equal(combined, unpack_codes(full.arrays["codes"], 8, x.size))
    assert progressive.payload_bits == full.payload_bits == 111 * 8 + 64
    np.testing.assert_array_equal(
        quant.decode(progressive, [x.shape], spec)[0], quant.decode(full, [x.shape], UNIFORM8)[0]
    )


def test_progressive_base_alone_decodes_to_the_bucket_middle():
    # range [0, 255] with 2 + 6 bits: step 1; the base selects a bucket of 64 codes, the base
    # alone decodes to its middle, 31.5 codes above the bucket's start
    x = np.array([0.0, 10.0, 100.0, 255.0], np.float32)
    spec = QuantSpec("progressive", base_bits=2, refine_bits=6)
    encoded = quant.encode([x], spec)
    base_only = quant.drop_refinement(encoded.arrays, spec)
    assert set(base_only) == {"base", "lows", "steps"}
    (decoded,), bits = quant.decode_arrays(base_only, [(4,)], spec)
    assert decoded.tolist() == [31.5, 31.5, 95.5, 223.5]
    assert bits == 4 * 2 + 64


def test_float_e4m3_powers_of_two_and_subnormals_by_hand():
    # largest magnitude 1.0 = 2**0: exponents run from -14 (the offset) to 0, the smallest
    # normal is 2**-14 and subnormals are multiples of 2**-17
    x = np.array(
        [1.0, -0.5, 2.0**-14, 2.0**-15, 3 * 2.0**-17, 2.0**-18, 1.5 * 2.0**-17, 0.3, 0.0],
        np.float32,
    )
    encoded = quant.encode([x], E4M3)
    (decoded,) = quant.decode(encoded, [x.shape], E4M3)
    assert encoded.arrays["offsets"].tolist() == [-14]
    assert encoded.payload_bits == 9 * 8 + 32
    # 2**-18 is half a subnormal step: ties to even -> 0; 1.5 steps -> 2 steps;
    # 0.3 = 1.2 x 2**-2 -> mantissa rint(9.6) = 10 -> 10/8 x 2**-2 = 0.3125
    expected = [1.0, -0.5, 2.0**-14, 2.0**-15, 3 * 2.0**-17, 0.0, 2.0**-16, 0.3125, 0.0]
    assert decoded.tolist() == expected
    codes = unpack_codes(encoded.arrays["codes"], 8, x.size)
    # 1.0: sign 0, field 0 - (-14) + 1 = 15, mantissa 0 -> 0 1111 000; -0.5: 1 1110 000;
    # 2**-14: field 1 -> 0 0001 000; 3 x 2**-17: subnormal 0 0000 011
    assert codes[:5].tolist() == [0b01111000, 0b11110000, 0b00001000, 0b00000100, 0b00000011]


def test_float_saturates_at_the_largest_code_and_e5m2_reaches_far():
    # 1.99 rounds to 2.0, beyond the top binade: saturates at (1 + 7/8) x 2**0
    assert quant.compress([np.array([1.99, 0.1], np.float32)], E4M3)[0][0] == 1.875
    e5m2 = QuantSpec("float", exponent_bits=5, mantissa_bits=2)
    x = np.array([10.0, 1e-5], np.float32)  # the source's dynamic range
    decoded = quant.compress([x], e5m2)[0]
    assert decoded[0] == 10.0 and decoded[1] == pytest.approx(1e-5, rel=0.13)


def test_stochastic_rounding_is_unbiased():
    # 0.3 between the 2-bit levels 0 and 1 (range [0, 3]): P(1) = 0.3. Over 20,000 draws the
    # mean has standard error sqrt(0.21 / 20000) = 0.0032; allow 4 standard errors (0.013)
    x = np.full(20_000, 0.3, np.float32)
    x[0], x[1] = 0.0, 3.0
    spec = QuantSpec("uniform", bits=2, stochastic=True)
    decoded = quant.compress([x], spec, np.random.default_rng(7))[0]
    assert set(np.unique(decoded[2:]).tolist()) == {0.0, 1.0}
    assert abs(decoded[2:].mean() - 0.3) < 0.013


def test_stochastic_float_is_unbiased():
    # 0.3 in e4m3 lies between 0.28125 (9/32) and 0.3125 (10/32): P(up) = 0.6
    x = np.full(20_000, 0.3, np.float32)
    x[0] = 1.0
    spec = QuantSpec("float", exponent_bits=4, mantissa_bits=3, stochastic=True)
    decoded = quant.compress([x], spec, np.random.default_rng(3))[0][1:]
    assert set(np.unique(decoded).tolist()) == {0.28125, 0.3125}
    assert abs(decoded.mean() - 0.3) < 4 * 0.03125 * np.sqrt(0.24 / 20_000)


def test_float_codes_do_not_depend_on_where_the_tensor_sits_in_float32():
    # [1, 0.5, 0.75, 0.3] e4m3-codes to [1, 0.5, 0.75, 0.3125] (0.3 = 1.2 x 2**-2 -> 10/8 x
    # 2**-2). Scaled by 2**-140 (float32 subnormals: 0.3 becomes 154 x 2**-149 = 0.30078 x
    # 2**-140, still coded 10/8 x 2**-2) or by 2**127 (decoding scales by 2**239, beyond
    # float32's largest power of two), the same codes and the same values scaled come back.
    x = np.array([1.0, 0.5, 0.75, 0.3], np.float32)
    expected = np.array([1.0, 0.5, 0.75, 0.3125])
    codes = unpack_codes(quant.encode([x], E4M3).arrays["codes"], 8, 4)
    for power in (-140, 127):
        scaled = (x.astype(np.float64) * 2.0**power).astype(np.float32)
        encoded = quant.encode([scaled], E4M3)
        np.testing.assert_array_equal(unpack_codes(encoded.arrays["codes"], 8, 4), codes)
        assert encoded.arrays["offsets"].tolist() == [power - 14]
        decoded = quant.decode(encoded, [(4,)], E4M3)[0]
        assert decoded.tolist() == (expected * 2.0**power).tolist()


def test_stochastic_draws_follow_the_generator():
    # The draws are keyed by the Generator's state: the same state gives the same codes, another
    # state other codes; and every entry gets its own draw (no repeated pattern along a tensor)
    x = np.full(4096, 0.5, np.float32)
    x[0], x[1] = 0.0, 1.0
    spec = QuantSpec("uniform", bits=1, stochastic=True)

    def codes(seed: int) -> np.ndarray:
        return quant.encode([x], spec, np.random.default_rng(seed)).arrays["codes"]

    np.testing.assert_array_equal(codes(11), codes(11))
    assert not np.array_equal(codes(11), codes(12))
    halves = unpack_codes(codes(11), 1, x.size)[2:].reshape(2, -1)
    assert not np.array_equal(halves[0], halves[1])


def test_edge_cases():
    constant, empty = np.full(5, 2.5, np.float32), np.zeros(0, np.float32)
    for spec in (UNIFORM8, E4M3, QuantSpec("progressive"), QuantSpec("fixed", bits=4)):
        decoded = quant.compress([np.zeros(4, np.float32), empty], spec)
        assert decoded[0].tolist() == [0.0] * 4 and decoded[1].shape == (0,)
    assert quant.compress([constant], QuantSpec("uniform", bits=1))[0].tolist() == [2.5] * 5
    with pytest.raises(ValueError, match="tensor 1 holds NaN or inf"):
        quant.encode([constant, np.array([np.inf], np.float32)], UNIFORM8)
    with pytest.raises(ValueError, match="needs an rng"):
        quant.encode([constant], QuantSpec(stochastic=True))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (QuantSpec("uniform", bits=9), "bits=9 is out of range; allowed: 1..8"),
        (QuantSpec("uniform", bits=0), "bits=0 is out of range"),
        (QuantSpec("log"), "scheme 'log' is not known; allowed: uniform, fixed"),
        (QuantSpec("progressive", base_bits=4, refine_bits=5), "exceed a 8-bit code"),
        (QuantSpec("float", exponent_bits=5, mantissa_bits=3), "1 + e + m <= 8"),
        (QuantSpec("float", exponent_bits=0, mantissa_bits=3), "exponent bits >= 1"),
    ],
)
def test_bad_specs_are_refused(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        spec.validate()


def test_decoding_checks_what_arrived():
    encoded = quant.encode([np.ones(3, np.float32)], UNIFORM8)
    with pytest.raises(DecodeError, match="'lows' has 1 entries; expected 2"):
        quant.decode_arrays(encoded.arrays, [(1,), (2,)], UNIFORM8)
    with pytest.raises(DecodeError, match="cannot hold"):
        quant.decode_arrays(encoded.arrays, [(30,)], UNIFORM8)
    as_float64 = encoded.arrays | {"lows": encoded.arrays["lows"].astype(np.float64)}
    with pytest.raises(DecodeError, match="'lows' is float64 with shape"):
        quant.decode_arrays(as_float64, [(3,)], UNIFORM8)
    with pytest.raises(DecodeError, match="progressive quantized arrays base, lows, refine, steps"):
        quant.decode_arrays(encoded.arrays, [(3,)], QuantSpec("progressive"))


SPECS = [
    UNIFORM8,
    QuantSpec("uniform", bits=3),
    QuantSpec("uniform", bits=1, stochastic=True),
    QuantSpec("fixed", bits=5),
    QuantSpec("progressive", base_bits=3, refine_bits=4),
    E4M3,
    QuantSpec("float", exponent_bits=5, mantissa_bits=2, stochastic=True),
    QuantSpec("float", exponent_bits=2, mantissa_bits=0),
]

finite = st.floats(-100, 100, allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float32, st.integers(0, 60), elements=finite),
    arrays(np.float32, st.integers(1, 9), elements=finite),
    st.sampled_from(SPECS),
)
def test_properties(first, second, spec):
    # Prepare
    tensors = [first, second.reshape(-1, 1)]
    copies = [t.copy() for t in tensors]
    # Execute
    encoded = quant.encode(tensors, spec, np.random.default_rng(0))
    again = quant.encode(tensors, spec, np.random.default_rng(0))
    decoded, bits = quant.decode_arrays(encoded.arrays, [t.shape for t in tensors], spec)
    # Assert: input untouched, same seed same bytes, exact bits, a fixed point of the codec
    for tensor, copy in zip(tensors, copies, strict=True):
        np.testing.assert_array_equal(tensor, copy)
    for name in encoded.arrays:
        np.testing.assert_array_equal(encoded.arrays[name], again.arrays[name])
    assert bits == encoded.payload_bits
    assert sum(a.nbytes for a in encoded.arrays.values()) * 8 >= encoded.payload_bits
    assert [d.shape for d in decoded] == [t.shape for t in tensors]
    if spec.scheme in ("uniform", "progressive"):
        for tensor, values in zip(tensors, decoded, strict=True):
            if tensor.size:
                span = float(tensor.max()) - float(tensor.min())
                levels = (1 << (spec.bits if spec.scheme == "uniform" else 7)) - 1
                bound = span / levels * (1 if spec.stochastic else 0.5)
                assert np.abs(values - tensor).max() <= bound + 1e-4
    if not spec.stochastic and spec.scheme != "progressive":
        redecoded = quant.compress(decoded, spec)  # decoded values are representable
        for values, again_values in zip(decoded, redecoded, strict=True):
            # up to float32 rounding at the tensor's scale: min + q * step is computed in
            # float32, so a small value beside large ones moves by an ulp of the large ones
            scale = np.float32(np.abs(values).max(initial=0.0))
            atol = 1e-6 + 2 * float(np.spacing(scale))
            np.testing.assert_allclose(values, again_values, rtol=1e-6, atol=atol)

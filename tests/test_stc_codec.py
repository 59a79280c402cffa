"""STC codec: hand-computed bit counts, properties, edge cases, error feedback."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedcodec import stc
from fedcodec.feedback import error_feedback_step
from fedcodec.golomb import gap_bits, read_gaps, rice_parameter


def test_rice_parameter_from_the_paper_formula():
    # b* = 1 + floor(log2(ln(0.618) / ln(1 - q))): q=0.01 -> log2(47.9)=5.58 -> 6
    assert [rice_parameter(q) for q in (0.01, 0.001, 0.002, 3 / 16, 0.5, 1.0)] == [6, 9, 8, 2, 0, 0]


def test_position_code_by_hand():
    # positions 2, 5, 13 with b = 2: gaps 2, 2, 7 -> quotients 0, 0, 1 -> unary "0" "0" "10",
    # remainders 2, 2, 3 -> "10" "10" "11": 4 + 6 = 10 bits
    bits = gap_bits(np.array([2, 5, 13]), b=2)
    assert bits.tolist() == [0, 0, 1, 0, 1, 0, 1, 0, 1, 1]
    positions, used = read_gaps(np.concatenate([bits, [0, 1, 1]]), count=3, b=2, size=16)
    assert positions.tolist() == [2, 5, 13] and used == 10


def test_sixteen_element_tensor_exact_bits_by_hand():
    # Prepare: 16 entries, p = 3/16 -> k = 3 kept: positions 2, 5, 13 (|x| = 4, 2, 6)
    x = np.zeros(16, np.float32)
    x[[2, 5, 13]] = [4.0, -2.0, 6.0]
    x[[0, 7]] = [0.5, -1.0]  # smaller, dropped
    # b = rice_parameter(3/16) = 2 -> 10 position bits (as above) + 3 sign bits
    # + 32 (count) + 32 (mean) = 77 bits
    # Execute
    encoded = stc.encode([x], p=3 / 16)
    # Assert
    assert encoded.payload_bits == 77
    assert encoded.arrays["bits"].nbytes == 2  # 13 bits packed into 2 bytes
    counts, means = stc.counts_and_means(encoded.arrays, 1)
    assert counts.tolist() == [3]
    assert means.tolist() == [4.0]  # (4 + 2 + 6) / 3
    # one header array: the count, then the float32 bits of the mean (4.0 = 0x40800000)
    assert encoded.arrays["header"].tolist() == [3, 0x40800000]
    (decoded,) = stc.decode(encoded, [(16,)])
    expected = np.zeros(16, np.float32)
    expected[[2, 5, 13]] = [4.0, -4.0, 4.0]
    np.testing.assert_array_equal(decoded, expected)


def test_edge_cases():
    zero, bias = np.zeros(50, np.float32), np.linspace(-1, 1, 10).astype(np.float32)
    encoded = stc.encode([zero, bias], p=0.01)
    # all-zero tensor sends nothing but its header; the 10-element bias keeps ceil(0.1) = 1
    assert stc.counts_and_means(encoded.arrays, 2)[0].tolist() == [0, 1]
    decoded_zero, decoded_bias = stc.decode(encoded, [(50,), (10,)])
    assert not decoded_zero.any()
    assert np.count_nonzero(decoded_bias) == 1 and abs(decoded_bias).max() == 1.0
    full = stc.compress([bias], p=1.0)[0]  # k = N: every entry, all at +-mean|x|
    assert np.count_nonzero(full) == 10
    assert np.allclose(np.abs(full), np.abs(bias).mean())
    with pytest.raises(ValueError, match="NaN or inf"):
        stc.encode([np.array([1.0, np.nan], np.float32)], p=0.5)
    with pytest.raises(ValueError, match=r"p=0 is out of range; allowed: \(0, 1\]"):
        stc.encode([bias], p=0)
    with pytest.raises(ValueError, match="approx=1.5 is out of range"):
        stc.encode([bias], p=0.5, approx=1.5)


finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.integers(1, 400), elements=finite), st.floats(0.001, 1.0))
def test_properties_exact_top_k(x, p):
    original = x.copy()
    encoded = stc.encode([x], p)
    (decoded,) = stc.decode(encoded, [x.shape])
    counts, means = stc.counts_and_means(encoded.arrays, 1)
    k, mean = int(counts[0]), means[0]
    np.testing.assert_array_equal(x, original)  # input never mutated
    assert set(np.unique(decoded)) <= {-mean, np.float32(0), mean}
    if np.abs(x).max() > 0:
        expected_k = min(stc.keep_count(x.size, p), np.count_nonzero(x))
        assert k == np.count_nonzero(decoded) == expected_k
        kept = np.flatnonzero(decoded)
        assert np.abs(x[kept]).min() >= np.sort(np.abs(x))[-k]  # the k largest
        assert np.all(np.sign(decoded[kept]) == np.sign(x[kept]))
    again = stc.encode([x], p)  # same input, same bytes
    assert again.payload_bits == encoded.payload_bits
    np.testing.assert_array_equal(again.arrays["bits"], encoded.arrays["bits"])
    assert 0 <= len(encoded.arrays["bits"]) * 8 - (encoded.payload_bits - 64) < 8


def test_decode_of_encode_is_exact_on_a_model():
    rng = np.random.default_rng(0)
    model = [rng.normal(size=s).astype(np.float32) for s in ((32, 1, 5, 5), (32,), (512, 10))]
    encoded = stc.encode(model, p=0.01)
    decoded = stc.decode(encoded, [m.shape for m in model])
    again = stc.decode(
        stc.Encoded(dict(encoded.arrays), encoded.payload_bits), [m.shape for m in model]
    )
    for a, b in zip(decoded, again, strict=True):
        np.testing.assert_array_equal(a, b)
    _, bits_read = stc.decode_arrays(encoded.arrays, [m.shape for m in model])
    assert bits_read == encoded.payload_bits  # the receiver measures the exact payload
    assert [np.count_nonzero(d) for d in decoded] == [8, 1, 52]


def test_approximate_top_k_same_seed_same_bytes():
    x = np.random.default_rng(1).normal(size=200_000).astype(np.float32)
    first = stc.encode([x], p=0.01, approx=0.1, rng=np.random.default_rng(5))
    again = stc.encode([x], p=0.01, approx=0.1, rng=np.random.default_rng(5))
    assert first.payload_bits == again.payload_bits
    np.testing.assert_array_equal(first.arrays["bits"], again.arrays["bits"])
    kept = int(stc.counts_and_means(first.arrays, 1)[0][0])
    assert 0.8 * 2000 < kept < 1.2 * 2000  # a sampled threshold: close to k, not exactly k


def test_approximate_top_k_falls_back_to_exact_when_degenerate():
    x = np.zeros(100_000, np.float32)
    x[:50] = 1.0  # a random sample of 10% almost surely holds only zeros -> threshold 0
    encoded = stc.encode([x], p=0.0005, approx=0.1, rng=np.random.default_rng(0))
    assert stc.counts_and_means(encoded.arrays, 1)[0].tolist() == [50]


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float32, st.integers(1, 200), elements=finite),
    arrays(np.float32, st.integers(1, 200), elements=finite),
)
def test_error_feedback_invariant(residual_seed, delta_seed):
    size = min(residual_seed.size, delta_seed.size)
    residual, delta = [residual_seed[:size].copy()], [delta_seed[:size].copy()]
    sent, new_residual = error_feedback_step(residual, delta, lambda t: stc.compress(t, p=0.1))
    np.testing.assert_allclose(
        residual[0] + delta[0], sent[0] + new_residual[0], rtol=1e-6, atol=1e-3
    )
    np.testing.assert_array_equal(residual[0], residual_seed[:size])  # inputs untouched

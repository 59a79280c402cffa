"""Uplink plugins (protocol/codecs.py): each built-in's exact encoding against hand-computed
bits, the registry, a user's plugin on the real ClientApp."""

from __future__ import annotations

import numpy as np
import pytest

from experiment.config import parse
from fedcodec.checks import DecodeError
from protocol import codecs
from protocol.plugins.half import Half
from protocol.plugins.qsgd import Qsgd
from protocol.plugins.randomk import RandomK
from protocol.plugins.signs import ScaledSign
from tests.support import read_rows, wrapped_run

SHAPES = [(4,), (2, 3)]
UPDATE = [
    np.array([1.0, -2.0, 3.0, -4.0], np.float32),
    np.arange(1, 7, dtype=np.float32).reshape(2, 3),
]


def test_random_k_sends_a_seed_and_k_values_per_tensor():
    codec = RandomK(fraction=0.5)

    encoded = codec.encode(UPDATE, np.random.default_rng(0))
    decoded, bits = codec.decode(encoded.arrays, SHAPES)

    # k = ceil(0.5 x 4) = 2 and ceil(0.5 x 6) = 3: 5 float32 values and the 64-bit seed
    assert encoded.payload_bits == bits == 64 + 5 * 32 == 224
    assert encoded.arrays["values"].dtype == np.float32 and encoded.arrays["seed"].shape == (1,)
    assert [int(np.count_nonzero(t)) for t in decoded] == [2, 3]
    for sent, original in zip(decoded, UPDATE, strict=True):  # kept entries keep their value
        kept = sent != 0
        assert np.array_equal(sent[kept], original[kept])


def test_random_k_without_error_feedback_is_unbiased():
    codec = RandomK(fraction=0.5, error_feedback=False)
    decoded, _ = codec.decode(codec.encode(UPDATE, np.random.default_rng(1)).arrays, SHAPES)
    # N / k = 4 / 2 and 6 / 3: each kept value doubled
    for sent, original in zip(decoded, UPDATE, strict=True):
        kept = sent != 0
        assert np.array_equal(sent[kept], 2 * original[kept])
    # averaged over many seeds, the decoded update approaches the update
    draws = [
        codec.decode(codec.encode(UPDATE, np.random.default_rng(s)).arrays, SHAPES)[0][0]
        for s in range(2000)
    ]
    assert np.allclose(np.mean(draws, axis=0), UPDATE[0], atol=0.25)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"values": np.zeros(5, np.float32)}, "expected the random-k arrays"),
        ({"seed": np.array([7], np.uint64), "values": np.zeros(4, np.float32)}, "4 values"),
        ({"seed": np.array([7], np.int64), "values": np.zeros(5, np.float32)}, "uint64 seed"),
    ],
)
def test_random_k_refuses_arrays_it_did_not_make(arrays, message):
    with pytest.raises(DecodeError, match=message):
        RandomK(fraction=0.5).decode(arrays, SHAPES)


def test_built_in_names_cannot_be_taken():
    with pytest.raises(ValueError, match="built in"):
        codecs.register("stc", RandomK(0.1))


def test_a_users_plugin_module_runs_on_both_sides_with_exact_bits(flat_config, tmp_path):
    flat_config.update(
        {"fraction-train": 1.0, "uplink": "absmax8", "codec-modules": "tests.user_codec"}
    )
    assert parse(flat_config).axes.uplink == "absmax8"

    _, recorder, _ = wrapped_run(flat_config, tmp_path / "run")

    ups = [r for r in read_rows(recorder) if r["phase"] == "train" and r["direction"] == "up"]
    assert len(ups) == 8 and {r["status"] for r in ups} == {"delivered"}
    # the logistic model's 2 tensors (a 32-bit scale each) and 7,850 entries (8 bits each)
    assert {(r["codec"], int(r["payload_bits"])) for r in ups} == {("absmax8", 62_864)}


def test_qsgd_codes_levels_in_elias_gamma_with_a_sign_bit_each():
    # [0, 3, -4]: norm 5; with s = 5 the scaled magnitudes 0, 3, 4 are whole, so rounding
    # keeps them: codes l + 1 = 1 ("1"), 4 ("00100") and 5 ("00101"), then the signs of the
    # two non-zero levels ("0", "1")
    codec = Qsgd(levels=5)
    update = [np.array([0.0, 3.0, -4.0], np.float32)]

    encoded = codec.encode(update, np.random.default_rng(0))
    decoded, bits = codec.decode(encoded.arrays, [(3,)])

    assert encoded.payload_bits == bits == 32 + 1 + 5 + 5 + 2 == 45
    stream = np.unpackbits(encoded.arrays["bits"])[:13].tolist()
    assert stream == [1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 1, 0, 1]
    assert np.array_equal(decoded[0], update[0])


def test_qsgd_is_unbiased():
    codec = Qsgd(levels=2)
    draws = [
        codec.decode(codec.encode(UPDATE, np.random.default_rng(s)).arrays, SHAPES)[0][1]
        for s in range(3000)
    ]
    assert np.allclose(np.mean(draws, axis=0), UPDATE[1], atol=0.15)


def test_scaled_sign_sends_the_mean_magnitude_and_one_bit_per_entry():
    codec = ScaledSign()
    encoded = codec.encode(UPDATE, np.random.default_rng(0))
    decoded, bits = codec.decode(encoded.arrays, SHAPES)
    # scales: (1 + 2 + 3 + 4) / 4 = 2.5 and (1 + ... + 6) / 6 = 3.5; 10 sign bits
    assert encoded.payload_bits == bits == 2 * 32 + 10 == 74
    assert np.array_equal(decoded[0], [2.5, -2.5, 2.5, -2.5])
    assert np.array_equal(decoded[1], np.full((2, 3), 3.5, np.float32))
    assert codec.error_feedback


@pytest.mark.parametrize(
    ("brain", "value", "sent"),
    [
        (False, 0.1, 0.0999755859375),  # float16's nearest to 0.1
        (True, 0.1, 0.10009765625),  # bfloat16: 0x3DCCCCCD rounds up to 0x3DCD
        (True, 1.0 + 2**-8, 1.0),  # a tie: to even (0x3F80)
        (False, 1e6, 65504.0),  # saturates instead of inf
    ],
)
def test_half_precision_rounds_as_its_format_says(brain, value, sent):
    codec = Half(brain=brain)
    encoded = codec.encode([np.array([value, 1.0], np.float32)], np.random.default_rng(0))
    decoded, bits = codec.decode(encoded.arrays, [(2,)])
    assert encoded.payload_bits == bits == 32
    assert decoded[0].tolist() == [sent, 1.0]

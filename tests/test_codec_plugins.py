"""Uplink plugins (protocol/codecs.py): random-k's exact encoding, the registry, a user's
plugin on the real ClientApp."""

from __future__ import annotations

import numpy as np
import pytest

from experiment.config import parse
from fedcodec.checks import DecodeError
from protocol import codecs
from protocol.randomk import RandomK
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
        {"fraction-train": 1.0, "uplink": "fp16", "codec-modules": "tests.fp16_codec"}
    )
    assert parse(flat_config).axes.uplink == "fp16"

    _, recorder, _ = wrapped_run(flat_config, tmp_path / "run")

    ups = [r for r in read_rows(recorder) if r["phase"] == "train" and r["direction"] == "up"]
    assert len(ups) == 8 and {r["status"] for r in ups} == {"delivered"}
    # the logistic model's 7,850 entries, 16 bits each
    assert {(r["codec"], int(r["payload_bits"])) for r in ups} == {("fp16", 7850 * 16)}

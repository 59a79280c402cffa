"""Every decoder either returns an update of the model's shapes or raises DecodeError.

Hypothesis starts from a valid encoding and breaks it the ways a faulty or hostile client
could: arrays dropped, added, truncated, extended, overwritten with random bytes, cast to
another dtype, reshaped, replaced by strings or scalars, and header values pushed to extremes.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcodec import quant, stc, topk
from fedcodec.checks import DecodeError
from fedcodec.quant import QuantSpec
from protocol import codecs
from protocol.qsfl import decode_segment, encode_segment

SHAPES = [(4, 25), (5,)]
SEGMENT = 40
QUANT_SPECS = [
    QuantSpec("uniform", bits=4),
    QuantSpec("fixed", bits=8),
    QuantSpec("progressive", base_bits=2, refine_bits=6),
    QuantSpec("float", exponent_bits=4, mantissa_bits=3),
]


def tensors() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=shape).astype(np.float32) for shape in SHAPES]


def cases() -> dict[str, tuple[dict, callable, list]]:
    """name -> (valid arrays, decode(arrays) -> tensors, the shapes expected)."""
    found = {
        "stc": (stc.encode(tensors(), 0.1).arrays, lambda a: stc.decode_arrays(a, SHAPES)[0]),
        "topk": (topk.encode(tensors(), 0.1).arrays, lambda a: topk.decode_arrays(a, SHAPES)[0]),
    }
    for spec in QUANT_SPECS:
        found[spec.label] = (
            quant.encode(tensors(), spec).arrays,
            lambda a, spec=spec: quant.decode_arrays(a, SHAPES, spec)[0],
        )
    for name in codecs.names():  # the plugins
        codec = codecs.registered(name)
        found[name] = (
            codec.encode(tensors(), np.random.default_rng(0)).arrays,
            lambda a, codec=codec: codec.decode(a, SHAPES)[0],
        )
    segment = np.linspace(-1, 1, SEGMENT, dtype=np.float32)
    for name, top_p in (("segment", 1.0), ("segment-topk", 0.25)):
        found[name] = (
            encode_segment(segment, top_p).arrays,
            lambda a: [decode_segment(a, SEGMENT)[0]],
        )
    return {
        name: (arrays, decode, [(SEGMENT,)] if name.startswith("segment") else SHAPES)
        for name, (arrays, decode) in found.items()
    }


CASES = cases()
DTYPES = [np.uint8, np.int32, np.uint32, np.int64, np.float16, np.float32, np.float64]


FAULTS = ("drop", "add", "truncate", "extend", "random", "cast", "view", "reshape", "string")
FAULTS += ("scalar", "extreme")


@st.composite
def broken(draw, arrays: dict[str, np.ndarray]) -> dict:
    """`arrays` with one to three faults."""
    arrays = dict(arrays)
    for _ in range(draw(st.integers(1, 3))):
        names = sorted(arrays)
        fault = draw(st.sampled_from(FAULTS))
        if fault == "add" or not names:
            arrays[draw(st.sampled_from(["extra", "bits", "values", "offsets"]))] = np.zeros(
                draw(st.integers(0, 8)), np.uint8
            )
            continue
        name = draw(st.sampled_from(names))
        value = np.atleast_1d(arrays[name])
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        if value.dtype.kind not in "iuf":  # already a string array: only dropping is left
            fault = "drop"
        if fault == "drop":
            del arrays[name]
        elif fault == "truncate":
            arrays[name] = value[: draw(st.integers(0, max(value.size - 1, 0)))]
        elif fault == "extend":
            arrays[name] = np.concatenate([value, value[: draw(st.integers(1, 16))]])
        elif fault == "random":
            raw = rng.integers(0, 256, value.nbytes, dtype=np.uint8)
            arrays[name] = raw.view(value.dtype) if value.nbytes else value
        elif fault == "cast":
            arrays[name] = value.astype(draw(st.sampled_from(DTYPES)))
        elif fault == "view" and value.nbytes % 8 == 0:
            # flat and contiguous: any dtype of up to 8 bytes then divides its bytes
            flat = np.ascontiguousarray(value.reshape(-1))
            arrays[name] = flat.view(draw(st.sampled_from(DTYPES)))
        elif fault == "reshape":
            arrays[name] = value.reshape(1, -1)
        elif fault == "view":
            arrays[name] = value[:0].view(np.uint8)
        elif fault == "string":
            arrays[name] = np.array(["garbage"] * max(value.size, 1))
        elif fault == "scalar":
            arrays[name] = np.array(value.flat[0] if value.size else 0, dtype=value.dtype)
        elif fault == "extreme" and value.size:
            extreme = draw(st.sampled_from([2**30, -(2**30), 2**31 - 1, 255, 0, 1]))
            copy = value.copy()
            info = np.iinfo(copy.dtype) if copy.dtype.kind in "iu" else None
            copy.flat[draw(st.integers(0, copy.size - 1))] = (
                np.clip(extreme, info.min, info.max) if info is not None else float(extreme)
            )
            arrays[name] = copy
    return arrays


@pytest.mark.parametrize("codec", sorted(CASES))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_a_broken_update_decodes_or_is_one_decode_error(codec, data):
    arrays, decode, shapes = CASES[codec]
    with np.errstate(all="ignore"):  # casts of random bytes overflow on purpose
        mutated = data.draw(broken(arrays))
    try:
        decoded = decode(mutated)
    except DecodeError:
        return
    assert [t.shape for t in decoded] == shapes
    assert all(t.dtype == np.float32 for t in decoded)


@pytest.mark.parametrize("codec", sorted(CASES))
def test_the_valid_encoding_decodes(codec):
    arrays, decode, shapes = CASES[codec]
    assert [t.shape for t in decode(arrays)] == shapes

"""How QSFL messages travel: the packed signs down, a segment up (dense, top-p or quantized).

Phase 1 replies carry scalars only (`REPORT_METRICS`); phase 2 (message type
`keys.UPLOAD`) asks for segment `keys.QSFL_SEGMENT` and gets it back as `encode_segment`
writes it.
"""

from __future__ import annotations

import numpy as np

from fedcodec import quant, topk
from fedcodec.checks import decoder, typed
from fedcodec.encoded import Encoded
from fedcodec.quant import QuantSpec
from protocol import keys

CODEC = "qsfl"
REPORT_METRICS = (keys.TRAIN_LOSS, keys.RELEVANCE, keys.NUM_EXAMPLES)  # a phase-1 reply


def encode_segment(
    values: np.ndarray,
    top_p: float,
    spec: QuantSpec | None = None,
    rng: np.random.Generator | None = None,
) -> Encoded:
    """A segment as it travels: float32 `values`, its top-p entries, or quantized by `spec`."""
    if spec is not None:
        return quant.encode([values], spec, rng)
    if top_p < 1.0:
        return topk.encode([values], top_p)
    return Encoded({"values": values.astype(np.float32)}, 32 * values.size)


@decoder
def decode_segment(
    arrays: dict[str, np.ndarray], size: int, spec: QuantSpec | None = None
) -> tuple[np.ndarray, int]:
    """Inverse of `encode_segment`: the segment's `size` values and the payload bits read.

    Raises DecodeError for malformed arrays.
    """
    if spec is not None:
        (values,), bits = quant.decode_arrays(arrays, [(size,)], spec)
        return values, bits
    if set(arrays) == {"values"}:
        return typed(arrays, "values", np.float32, size), 32 * size
    (values,), bits = topk.decode_arrays(arrays, [(size,)])
    return values, bits


def pack_signs(update: np.ndarray) -> np.ndarray:
    """The signs of a flat update as packed bits (1 where > 0): ceil(N / 8) bytes."""
    return np.packbits(update > 0)


def unpack_signs(packed: np.ndarray, size: int) -> np.ndarray:
    """Inverse of `pack_signs` for a flat update of `size` entries."""
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8))
    if bits.size < size or bits.size - size >= 8:
        raise ValueError(f"{packed.size} sign bytes do not fit {size} entries")
    return bits[:size].astype(bool)

"""Half precision as uplink plugins: IEEE float16 (`fp16`) and bfloat16 (`bf16`).

Every entry of the update travels in 16 bits: `values` holds them all, tensor after tensor
(float16, or bfloat16's bit patterns as uint16: the upper half of the float32, rounded to
nearest even). payload_bits = 16 x entries. float16 saturates at +-65,504 (larger entries
are clipped, not sent as inf); bfloat16 keeps float32's range with 8 significant bits.
"""

from __future__ import annotations

import math

import numpy as np

from fedcodec.checks import decoder, expect_names, typed
from fedcodec.encoded import Encoded
from protocol.codecs import UplinkCodec, register

BITS = 16
FLOAT16_MAX = float(np.finfo(np.float16).max)


def to_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest, ties to even."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def from_bfloat16(patterns: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32, exactly."""
    return (patterns.astype(np.uint32) << 16).view(np.float32)


class Half(UplinkCodec):
    """Every entry in 16 bits: IEEE half (`brain=False`) or bfloat16 (`brain=True`)."""

    def __init__(self, brain: bool) -> None:
        self.brain = brain
        self.dtype = np.uint16 if brain else np.float16

    def encode(self, update: list[np.ndarray], rng: np.random.Generator) -> Encoded:
        flat = np.concatenate([t.ravel() for t in update]).astype(np.float32)
        if self.brain:
            values = to_bfloat16(flat)
        else:
            values = np.clip(flat, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)
        return Encoded({"values": values}, BITS * values.size)

    @decoder
    def decode(
        self, arrays: dict[str, np.ndarray], shapes: list[tuple[int, ...]]
    ) -> tuple[list[np.ndarray], int]:
        expect_names(arrays, ("values",), "bf16" if self.brain else "fp16")
        sizes = [math.prod(shape) for shape in shapes]
        values = typed(arrays, "values", self.dtype, sum(sizes))
        flat = from_bfloat16(values) if self.brain else values.astype(np.float32)
        parts = np.split(flat, np.cumsum(sizes)[:-1])
        return [p.reshape(s) for p, s in zip(parts, shapes, strict=True)], BITS * values.size


register("fp16", Half(brain=False))
register("bf16", Half(brain=True))

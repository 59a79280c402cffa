"""Scaled sign with error feedback (EF-signSGD, Karimireddy et al., 2019) as an uplink plugin.

Each tensor g of d entries travels as (||g||_1 / d) x sign(g): one float32 scale and one bit
per entry (1 = non-negative), packed MSB first; the client keeps g - that in its error feedback
residual (the method's memory). What travels: `scales` (float32, one per tensor) and `signs`
(uint8, every tensor's bits back to back). payload_bits = 32 x tensors + entries.
"""

from __future__ import annotations

import math

import numpy as np

from fedcodec.checks import DecodeError, decoder, expect_names, typed
from fedcodec.encoded import Encoded
from protocol.codecs import UplinkCodec, register

SCALE_BITS = 32


class ScaledSign(UplinkCodec):
    """EF-signSGD's compressor: the mean magnitude times the sign, with error feedback."""

    error_feedback = True

    def encode(self, update: list[np.ndarray], rng: np.random.Generator) -> Encoded:
        scales = np.array([np.abs(t).mean() if t.size else 0.0 for t in update], np.float32)
        bits = np.concatenate([t.ravel() >= 0 for t in update])
        arrays = {"scales": scales, "signs": np.packbits(bits)}
        return Encoded(arrays, SCALE_BITS * len(update) + bits.size)

    @decoder
    def decode(
        self, arrays: dict[str, np.ndarray], shapes: list[tuple[int, ...]]
    ) -> tuple[list[np.ndarray], int]:
        expect_names(arrays, ("scales", "signs"), "efsignsgd")
        sizes = [math.prod(shape) for shape in shapes]
        scales = typed(arrays, "scales", np.float32, len(shapes))
        packed = typed(arrays, "signs", np.uint8, (sum(sizes) + 7) // 8)
        if not np.all(np.isfinite(scales)) or np.any(scales < 0):
            raise DecodeError("efsignsgd scales must be finite and >= 0")
        signs = np.where(np.unpackbits(packed)[: sum(sizes)], 1.0, -1.0).astype(np.float32)
        tensors, start = [], 0
        for shape, size, scale in zip(shapes, sizes, scales, strict=True):
            tensors.append((scale * signs[start : start + size]).reshape(shape))
            start += size
        return tensors, SCALE_BITS * len(shapes) + sum(sizes)


register("efsignsgd", ScaledSign())

"""A user's own uplink plugin, as docs/write-a-codec.md builds one: int8 with a per-tensor scale.

Registered as "absmax8" when imported (`codec-modules = "tests.user_codec"`).
"""

from __future__ import annotations

import numpy as np

from fedcodec.checks import DecodeError, expect_names
from fedcodec.encoded import Encoded
from protocol.codecs import UplinkCodec, register


class AbsMax8(UplinkCodec):
    """Each tensor scaled by its largest magnitude into int8: 32 bits a tensor, 8 an entry."""

    def encode(self, update: list[np.ndarray], rng: np.random.Generator) -> Encoded:
        scales = np.array([np.abs(t).max() / 127 if t.size else 0 for t in update], np.float32)
        codes = [
            np.round(t / s).astype(np.int8) if s else np.zeros(t.shape, np.int8)
            for t, s in zip(update, scales, strict=True)
        ]
        values = np.concatenate([c.ravel() for c in codes])
        return Encoded({"scales": scales, "codes": values}, 32 * scales.size + 8 * values.size)

    def decode(self, arrays, shapes):
        expect_names(arrays, ("scales", "codes"), "absmax8")
        scales, codes = arrays["scales"], arrays["codes"]
        sizes = [int(np.prod(shape)) for shape in shapes]
        if scales.dtype != np.float32 or scales.shape != (len(shapes),):
            raise DecodeError("expected one float32 scale per tensor")
        if codes.dtype != np.int8 or codes.shape != (sum(sizes),):
            raise DecodeError(f"expected {sum(sizes)} int8 codes")
        parts = np.split(codes.astype(np.float32), np.cumsum(sizes)[:-1])
        tensors = [s * p.reshape(shape) for s, p, shape in zip(scales, parts, shapes, strict=True)]
        return tensors, 32 * scales.size + 8 * codes.size


register("absmax8", AbsMax8())

"""A user's own uplink plugin, as docs/write-a-codec.md builds one: the update in float16.

Registered as "fp16" when imported (`codec-modules = "tests.fp16_codec"`).
"""

from __future__ import annotations

import numpy as np

from fedcodec.checks import DecodeError, expect_names
from fedcodec.encoded import Encoded
from protocol.codecs import UplinkCodec, register


class Float16(UplinkCodec):
    """Every entry of the update as an IEEE half: 16 bits each."""

    def encode(self, update: list[np.ndarray], rng: np.random.Generator) -> Encoded:
        values = np.concatenate([t.ravel() for t in update]).astype(np.float16)
        return Encoded({"values": values}, 16 * values.size)

    def decode(self, arrays, shapes):
        expect_names(arrays, ("values",), "fp16")
        values = arrays["values"]
        sizes = [int(np.prod(shape)) for shape in shapes]
        if values.dtype != np.float16 or values.shape != (sum(sizes),):
            raise DecodeError(f"expected {sum(sizes)} float16 values")
        parts = np.split(values.astype(np.float32), np.cumsum(sizes)[:-1])
        return [p.reshape(shape) for p, shape in zip(parts, shapes, strict=True)], 16 * values.size


register("fp16", Float16())

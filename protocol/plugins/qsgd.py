"""QSGD (Alistarh et al., 2017) as an uplink plugin: s levels, stochastic rounding, Elias-gamma.

Each tensor v travels as its L2 norm (float32) and, per entry, the level
l = floor(s |v_i| / ||v|| + u), u ~ U[0, 1) (so E[l] = s |v_i| / ||v||: unbiased), coded as the
Elias-gamma code of l + 1, then one sign bit per entry with l > 0. What travels:

- `norms` (float32): one per tensor;
- `bits` (uint8): every entry's level code, tensor after tensor, then the sign bits (1 =
  negative), packed MSB first.

payload_bits = 32 x tensors + the codes' exact length + the sign bits: the logged bits are the
coded length, as TensorFlow Federated's bitrate (8 x encoded bytes / entries, there in bytes).
Decoded: ||v|| x sign x l / s.
"""

from __future__ import annotations

import math

import numpy as np

from fedcodec import elias
from fedcodec.checks import DecodeError, decoder, expect_names, typed
from fedcodec.encoded import Encoded
from protocol.codecs import UplinkCodec, register

NORM_BITS = 32


class Qsgd(UplinkCodec):
    """QSGD with `levels` = s quantization levels per sign."""

    def __init__(self, levels: int) -> None:
        if levels < 1:
            raise ValueError(f"QSGD levels s={levels} must be >= 1")
        self.levels = levels

    def encode(self, update: list[np.ndarray], rng: np.random.Generator) -> Encoded:
        norms = np.array([np.linalg.norm(t.astype(np.float64)) for t in update], np.float32)
        levels, negative = [], []
        for tensor, norm in zip(update, norms, strict=True):
            flat = tensor.ravel().astype(np.float64)
            scaled = np.abs(flat) / norm * self.levels if norm > 0 else np.zeros(flat.size)
            level = np.minimum(np.floor(scaled + rng.random(flat.size)), self.levels)
            levels.append(level.astype(np.int64))
            negative.append(flat[level > 0] < 0)
        codes = np.concatenate(levels) + 1
        signs = np.concatenate(negative)
        code_bytes, code_bits = elias.encode(codes)
        stream = np.concatenate([np.unpackbits(code_bytes)[:code_bits], signs.astype(np.uint8)])
        arrays = {"norms": norms, "bits": np.packbits(stream)}
        return Encoded(arrays, NORM_BITS * len(update) + stream.size)

    @decoder
    def decode(
        self, arrays: dict[str, np.ndarray], shapes: list[tuple[int, ...]]
    ) -> tuple[list[np.ndarray], int]:
        expect_names(arrays, ("norms", "bits"), "qsgd")
        norms = typed(arrays, "norms", np.float32, len(shapes))
        packed = typed(arrays, "bits", np.uint8)
        if not np.all(np.isfinite(norms)) or np.any(norms < 0):
            raise DecodeError("qsgd norms must be finite and >= 0")
        sizes = [math.prod(shape) for shape in shapes]
        codes, end = elias.decode(packed, sum(sizes))
        levels = codes - 1
        if np.any(levels > self.levels):
            raise DecodeError(f"a qsgd level above s={self.levels}")
        nonzero = int(np.count_nonzero(levels))
        if packed.size != (end + nonzero + 7) // 8:
            raise DecodeError(
                f"{packed.size} bytes of bits, not the {(end + nonzero + 7) // 8} coded"
            )
        signs = np.unpackbits(packed)[end : end + nonzero].astype(bool)
        values = levels.astype(np.float32)
        values[levels > 0] *= np.where(signs, -1.0, 1.0).astype(np.float32)
        tensors, start = [], 0
        for shape, size, norm in zip(shapes, sizes, norms, strict=True):
            part = values[start : start + size] * (norm / np.float32(self.levels))
            tensors.append(part.astype(np.float32).reshape(shape))
            start += size
        return tensors, NORM_BITS * len(shapes) + end + nonzero


register("qsgd", Qsgd(levels=16))

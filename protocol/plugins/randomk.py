"""Random-k sparsification as an uplink plugin (the example of docs/write-a-codec.md).

Each tensor sends k = ceil(p x N) of its entries at positions drawn uniformly without
replacement (Konecny et al., 2016, "random mask"; Stich et al., 2018, with memory). The
positions are not sent: they come from a 64-bit seed the client draws, which travels instead,
so what travels for T tensors is

- `seed` (uint64, 1 entry): the seed of the positions;
- `values` (float32): the k kept values of each tensor, tensor after tensor, in the order the
  positions were drawn.

payload_bits = 64 + 32 x sum(k). With error feedback (the default, Stich et al.'s memory) the
values are sent as they are; without it they are scaled by N / k, so that the decoded update is
an unbiased estimate of the update.
"""

from __future__ import annotations

import math

import numpy as np

from fedcodec.checks import DecodeError, expect_names
from fedcodec.encoded import Encoded
from protocol.codecs import UplinkCodec, register

SEED_BITS, VALUE_BITS = 64, 32


class RandomK(UplinkCodec):
    """k = ceil(fraction x N) random entries of each tensor, positions from a sent seed."""

    def __init__(self, fraction: float, error_feedback: bool = True) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"random-k fraction={fraction} is not in (0, 1]")
        self.fraction = fraction
        self.error_feedback = error_feedback

    def kept(self, size: int) -> int:
        """Entries a tensor of `size` entries sends."""
        return math.ceil(self.fraction * size)

    def positions(self, seed: int, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
        """The positions each tensor sends, drawn from `seed` (both sides draw the same)."""
        rng = np.random.default_rng(seed)
        sizes = [math.prod(shape) for shape in shapes]
        return [rng.choice(size, self.kept(size), replace=False) for size in sizes]

    def encode(self, update: list[np.ndarray], rng: np.random.Generator) -> Encoded:
        seed = int(rng.integers(2**63))
        chosen = self.positions(seed, [t.shape for t in update])
        values = [self._scale(t.size) * t.ravel()[p] for t, p in zip(update, chosen, strict=True)]
        arrays = {
            "seed": np.array([seed], np.uint64),
            "values": np.concatenate(values).astype(np.float32),
        }
        bits = SEED_BITS + VALUE_BITS * arrays["values"].size
        return Encoded(arrays, bits)

    def decode(
        self, arrays: dict[str, np.ndarray], shapes: list[tuple[int, ...]]
    ) -> tuple[list[np.ndarray], int]:
        expect_names(arrays, ("seed", "values"), "random-k")
        seed, values = arrays["seed"], arrays["values"]
        if seed.dtype != np.uint64 or seed.shape != (1,) or values.dtype != np.float32:
            raise DecodeError("random-k expects a uint64 seed and float32 values")
        chosen = self.positions(int(seed[0]), shapes)
        if values.shape != (sum(p.size for p in chosen),):
            raise DecodeError(f"{values.size} values, not the {sum(p.size for p in chosen)} sent")
        tensors, start = [], 0
        for shape, p in zip(shapes, chosen, strict=True):
            flat = np.zeros(math.prod(shape), np.float32)
            flat[p] = values[start : start + p.size]
            tensors.append(flat.reshape(shape))
            start += p.size
        return tensors, SEED_BITS + VALUE_BITS * values.size

    def _scale(self, size: int) -> float:
        """1 with error feedback; N / k without (unbiased)."""
        return 1.0 if self.error_feedback else size / self.kept(size)


register("randomk", RandomK(fraction=0.01))

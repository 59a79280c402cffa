"""Sparse ternary compression (Sattler et al.) of a whole model update into three arrays.

Per tensor: keep the k = ceil(p * N) largest magnitudes (never an exact zero), send each as
+mu or -mu, mu the mean magnitude of the kept entries. What travels for a model of T tensors:

- `bits` (uint8): per tensor, its Golomb-Rice position code then one sign bit per kept entry
  (1 = negative), all tensors back to back, packed with `np.packbits`;
- `header` (uint32, 2T): k of each tensor, then the float32 bit pattern of mu of each tensor.

Counts and means travel as one array because on Flower's transport every array is objects and
requests of its own (about 1 kB each), and because the counts alone would be equal across
clients (exact top-k keeps ceil(p N) entries), an object that Flower may or may not send
again depending on timing. `payload_bits` is the exact content: the bit length of `bits`
before padding, plus 32 bits per count and per mean. The receiver knows the model's shapes,
so they do not travel; the Rice parameter follows from k and N on both sides.
"""

from __future__ import annotations

import math

import numpy as np

from fedcodec.checks import decoder, expect_names, typed
from fedcodec.encoded import Encoded
from fedcodec.golomb import gap_bits, read_gaps, rice_parameter

HEADER_BITS_PER_TENSOR = 32 + 32  # one uint32 count, one float32 mean
ARRAY_NAMES = ("bits", "header")


def keep_count(size: int, p: float) -> int:
    """k = ceil(p * N), at most N (the reference's rule)."""
    return min(size, math.ceil(p * size))


def top_k_positions(
    magnitudes: np.ndarray,
    k: int,
    approx: float = 1.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Sorted positions of the entries kept by (approximate) top-k of `magnitudes`.

    With `approx` < 1, the threshold is the k-th largest share of a random contiguous sample
    of at least `approx` of the entries (and at least 100 / p of them, as the reference does);
    every entry at or above it is kept, so the count is close to k, not exactly k. When the
    estimate is degenerate (zero, or the maximum) the exact top-k is used.
    """
    size = magnitudes.size
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if approx < 1.0 and k < size:
        if rng is None:
            raise ValueError("approximate top-k needs an rng")
        p = k / size
        sample = min(size, max(math.ceil(size * approx), math.ceil(100 / p)))
        if sample < size:
            start = int(rng.integers(size - sample + 1))
            window = magnitudes[start : start + sample]
            top = math.ceil(sample * p)
            threshold = np.partition(window, sample - top)[sample - top]
            if 0.0 < threshold < magnitudes.max():
                return np.flatnonzero(magnitudes >= threshold)
    kept = np.argpartition(magnitudes, size - k)[size - k :]
    return np.sort(kept)


def sparsify(
    tensors: list[np.ndarray],
    p: float,
    approx: float = 1.0,
    rng: np.random.Generator | None = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per tensor: its flat float32 values, the kept positions and their Golomb-Rice code.

    The kept positions are the (approximate) top ceil(p * N) magnitudes, never an exact zero.

    Raises
    ------
    ValueError
        When p or approx is outside (0, 1], or a tensor holds NaN or inf.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p={p} is out of range; allowed: (0, 1]")
    if not 0.0 < approx <= 1.0:
        raise ValueError(f"approx={approx} is out of range; allowed: (0, 1]")
    kept = []
    for index, tensor in enumerate(tensors):
        flat = np.asarray(tensor, dtype=np.float32).ravel()
        if not np.isfinite(flat).all():
            raise ValueError(f"tensor {index} holds NaN or inf; refusing to encode it")
        magnitudes = np.abs(flat)
        positions = top_k_positions(magnitudes, keep_count(flat.size, p), approx, rng)
        positions = positions[magnitudes[positions] > 0]
        b = rice_parameter(positions.size / flat.size) if flat.size else 0
        kept.append((flat, positions, gap_bits(positions, b)))
    return kept


def read_positions(bits: np.ndarray, offset: int, count: int, size: int) -> tuple[np.ndarray, int]:
    """The `count` positions coded at `offset` of a tensor of `size` entries; the new offset."""
    if count > size:
        raise ValueError(f"count {count} exceeds the tensor's {size} entries")
    b = rice_parameter(count / size) if size else 0
    positions, used = read_gaps(bits[offset:], count, b, size)
    if positions.size and positions[-1] >= size:
        raise ValueError("the position stream does not fit the tensor")
    return positions, offset + used


def encode(
    tensors: list[np.ndarray],
    p: float,
    *,
    approx: float = 1.0,
    rng: np.random.Generator | None = None,
) -> Encoded:
    """STC-encode a list of tensors (a model update). The inputs are never modified.

    Raises
    ------
    ValueError
        When p or approx is outside (0, 1], or a tensor holds NaN or inf.
    """
    streams, counts, means = [], [], []
    for flat, positions, position_bits in sparsify(tensors, p, approx, rng):
        magnitudes = np.abs(flat[positions])  # a kept zero would have become +-mu
        mean = np.float32(magnitudes.mean()) if positions.size else np.float32(0)
        streams += [position_bits, (flat[positions] < 0).astype(np.uint8)]
        counts.append(positions.size)
        means.append(mean)
    bits = np.concatenate(streams) if streams else np.zeros(0, np.uint8)
    header = np.concatenate(
        [np.asarray(counts, dtype=np.uint32), np.asarray(means, dtype=np.float32).view(np.uint32)]
    )
    arrays = {"bits": np.packbits(bits), "header": header}
    return Encoded(arrays, len(bits) + HEADER_BITS_PER_TENSOR * len(tensors))


def decode(encoded: Encoded, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Rebuild the ternary tensors (float32) of the given shapes from `encoded`."""
    return decode_arrays(encoded.arrays, shapes)[0]


@decoder
def decode_arrays(
    arrays: dict[str, np.ndarray], shapes: list[tuple[int, ...]]
) -> tuple[list[np.ndarray], int]:
    """Decode the travelling arrays; return the tensors and the exact payload bits read.

    The receiver needs no bit count: it walks the stream with the counts it was sent, and
    the padding of the last byte is never read. Raises DecodeError for malformed arrays.
    """
    expect_names(arrays, ARRAY_NAMES, "STC")
    counts, means = counts_and_means(arrays, len(shapes))
    bits = np.unpackbits(typed(arrays, "bits", np.uint8))
    tensors, offset = [], 0
    for shape, count, mean in zip(shapes, counts, means, strict=True):
        size, count = math.prod(shape), int(count)
        positions, offset = read_positions(bits, offset, count, size)
        signs = bits[offset : offset + count]
        offset += count
        if len(signs) != count:
            raise ValueError("the sign stream does not fit the tensor")
        flat = np.zeros(size, dtype=np.float32)
        flat[positions] = np.where(signs == 1, -mean, mean)
        tensors.append(flat.reshape(shape))
    return tensors, offset + HEADER_BITS_PER_TENSOR * len(shapes)


def counts_and_means(arrays: dict[str, np.ndarray], tensors: int) -> tuple[np.ndarray, np.ndarray]:
    """k and mu of each of `tensors` tensors, from the `header` array."""
    header = typed(arrays, "header", np.uint32, 2 * tensors)
    return header[:tensors], header[tensors:].view(np.float32)


def compress(tensors: list[np.ndarray], p: float, **kwargs) -> list[np.ndarray]:
    """decode(encode(...)): what the receiver reconstructs."""
    return decode(encode(tensors, p, **kwargs), [np.shape(t) for t in tensors])

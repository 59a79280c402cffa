"""Top-k sparsification: the k = ceil(p * N) largest magnitudes of each tensor, as float32.

The sparse companion of STC (fedcodec/stc.py) that keeps the values: what travels for T
tensors is

- `bits` (uint8): per tensor, the Golomb-Rice code of its kept positions (STC's code), all
  tensors back to back, packed with `np.packbits`;
- `kept` (uint32): k of each tensor (T entries), then the float32 bit patterns of the kept
  values, tensor after tensor, in position order.

Counts and values travel as one array for the reason STC's counts and means do (fedcodec/stc.py):
on Flower's transport each array costs requests of its own, and the counts alone are equal
across clients. `payload_bits` is the bit length of `bits` before padding + 32 per count + 32
per value.
"""

from __future__ import annotations

import math

import numpy as np

from fedcodec.checks import DecodeError, decoder, expect_names, typed
from fedcodec.encoded import Encoded
from fedcodec.stc import read_positions, sparsify

ARRAY_NAMES = ("bits", "kept")


def encode(tensors: list[np.ndarray], p: float) -> Encoded:
    """Keep each tensor's top ceil(p * N) magnitudes (exact zeros never count).

    Raises
    ------
    ValueError
        When p is outside (0, 1] or a tensor holds NaN or inf.
    """
    streams, counts, values = [], [], []
    for flat, positions, position_bits in sparsify(tensors, p):
        streams.append(position_bits)
        counts.append(positions.size)
        values.append(flat[positions])
    bits = np.concatenate(streams) if streams else np.zeros(0, np.uint8)
    kept_values = np.concatenate(values) if values else np.zeros(0, np.float32)
    kept = np.concatenate(
        [np.asarray(counts, dtype=np.uint32), kept_values.astype(np.float32).view(np.uint32)]
    )
    arrays = {"bits": np.packbits(bits), "kept": kept}
    return Encoded(arrays, len(bits) + 32 * len(tensors) + 32 * sum(counts))


@decoder
def decode_arrays(
    arrays: dict[str, np.ndarray], shapes: list[tuple[int, ...]]
) -> tuple[list[np.ndarray], int]:
    """Rebuild the sparse tensors (float32); return them and the exact payload bits read.

    Raises DecodeError for malformed arrays.
    """
    expect_names(arrays, ARRAY_NAMES, "top-k")
    counts, values = counts_and_values(arrays, len(shapes))
    bits = np.unpackbits(typed(arrays, "bits", np.uint8))
    tensors, offset, start = [], 0, 0
    for shape, count in zip(shapes, counts, strict=True):
        size, count = math.prod(shape), int(count)
        positions, offset = read_positions(bits, offset, count, size)
        flat = np.zeros(size, dtype=np.float32)
        flat[positions] = values[start : start + count]
        start += count
        tensors.append(flat.reshape(shape))
    return tensors, offset + 32 * len(shapes) + 32 * values.size


def counts_and_values(arrays: dict[str, np.ndarray], tensors: int) -> tuple[np.ndarray, np.ndarray]:
    """k of each of `tensors` tensors and the kept values, from the `kept` array."""
    kept = typed(arrays, "kept", np.uint32)
    if kept.size < tensors:
        raise DecodeError(f"'kept' has {kept.size} entries, fewer than the {tensors} counts")
    counts, values = kept[:tensors], kept[tensors:].view(np.float32)
    if int(counts.sum(dtype=np.int64)) != values.size:
        raise DecodeError(f"{values.size} values for {int(counts.sum(dtype=np.int64))} positions")
    return counts, values

"""Payload and dense sizes of the arrays a message carries (the levels above: ledger.levels)."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord

FLOAT32_BYTES = 4


def payload_bits(arrays: ArrayRecord) -> int:
    """Exact bits of the array values a record carries (no headers, no keys)."""
    return sum(
        int(np.prod(array.shape, dtype=np.int64)) * np.dtype(array.dtype).itemsize * 8
        for array in arrays.values()
    )


def dense_bytes(arrays: ArrayRecord) -> int:
    """Float32 size of the tensors a record represents."""
    return sum(
        int(np.prod(array.shape, dtype=np.int64)) * FLOAT32_BYTES for array in arrays.values()
    )


def dense_fields(arrays: ArrayRecord) -> dict:
    """Log fields of a message that carries `arrays` as they are; the codec is their dtype
    ("float32"; "float64" for the models Flower's FedAdam, FedYogi, FedAdagrad and QFedAvg
    return; several joined by "+")."""
    dtypes = dict.fromkeys(str(np.dtype(array.dtype)) for array in arrays.values())
    return {
        "codec": "+".join(dtypes) or "float32",
        "payload_bits": payload_bits(arrays),
        "dense_bytes": dense_bytes(arrays),
    }

"""Byte accounting for Flower messages: what a message carries, and the dense baseline."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, RecordDict

FLOAT32_BYTES = 4
DENSE_CODEC = "float32"


def wire_bytes(content: RecordDict) -> int:
    """Bytes the message content carries, as Flower counts them (`count_bytes` per record).

    For an ArrayRecord this is each array's serialized bytes (the `.npy` buffer, header
    included) plus its key; for Config/MetricRecords, the values and keys.
    """
    return sum(record.count_bytes() for record in content.values())


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
    """Log fields of a message that carries `arrays` as they are."""
    return {
        "codec": DENSE_CODEC,
        "payload_bits": payload_bits(arrays),
        "dense_bytes": dense_bytes(arrays),
    }

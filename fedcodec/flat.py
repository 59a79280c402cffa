"""A model's tensors as one flat float32 vector, and back."""

from __future__ import annotations

import math

import numpy as np


def flatten(tensors: list[np.ndarray]) -> np.ndarray:
    """The tensors' entries back to back, as one float32 vector (a copy)."""
    if not tensors:
        return np.zeros(0, np.float32)
    return np.concatenate([np.ravel(t) for t in tensors]).astype(np.float32, copy=False)


def unflatten(flat: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Views of `flat` in the given shapes, in order."""
    tensors, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        tensors.append(flat[start : start + size].reshape(shape))
        start += size
    return tensors

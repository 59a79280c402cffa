"""The result of every codec: the arrays that travel and their exact bit count."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Encoded:
    """The arrays that travel and the exact number of bits they carry."""

    arrays: dict[str, np.ndarray]
    payload_bits: int

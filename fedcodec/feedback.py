"""Error feedback (error accumulation), pure: A += delta; C = compress(A); A -= C.

The client keeps its residual in `context.state`, the server on the strategy; both call this.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Tensors = list[np.ndarray]


def error_feedback_step(
    residual: Tensors, delta: Tensors, compress: Callable[[Tensors], Tensors]
) -> tuple[Tensors, Tensors]:
    """Return (what is sent, the new residual); neither input is modified.

    Invariant: residual + delta == sent + new_residual (up to float32 rounding).
    """
    accumulated = [r + d for r, d in zip(residual, delta, strict=True)]
    sent = compress(accumulated)
    return sent, [a - c for a, c in zip(accumulated, sent, strict=True)]

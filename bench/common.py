"""Shared by the benchmarks: the Pythia-14m tensor shapes and a median timer."""

from __future__ import annotations

import statistics
import time

HIDDEN, LAYERS, INTERMEDIATE, VOCAB = 128, 6, 512, 50304


def pythia_14m_shapes() -> list[tuple[int, ...]]:
    """Parameter shapes of Pythia-14m (embeddings untied, LayerNorms with bias)."""
    layer = [
        (HIDDEN,),
        (HIDDEN,),  # input layernorm
        (HIDDEN,),
        (HIDDEN,),  # post-attention layernorm
        (3 * HIDDEN, HIDDEN),
        (3 * HIDDEN,),  # query_key_value
        (HIDDEN, HIDDEN),
        (HIDDEN,),  # attention dense
        (INTERMEDIATE, HIDDEN),
        (INTERMEDIATE,),  # mlp up
        (HIDDEN, INTERMEDIATE),
        (HIDDEN,),  # mlp down
    ]
    return [(VOCAB, HIDDEN)] + layer * LAYERS + [(HIDDEN,), (HIDDEN,), (VOCAB, HIDDEN)]


def median_time(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)

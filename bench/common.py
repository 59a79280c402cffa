"""Shared by the benchmarks: the Pythia-14m tensor shapes and a paired timer."""

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


def paired_times(baseline, action, repeats: int) -> tuple[float, float, float]:
    """Time `baseline` and `action` alternately: (median baseline s, median action s, ratio).

    The ratio is the median of the per-pair ratios, so that a slow spell of a noisy machine
    slows both sides of a pair instead of one column of the table.
    """
    pairs = []
    for _ in range(repeats):
        pair = []
        for call in (baseline, action):
            start = time.perf_counter()
            call()
            pair.append(time.perf_counter() - start)
        pairs.append(pair)
    base, timed = zip(*pairs, strict=True)
    ratio = statistics.median(t / b for b, t in pairs)
    return statistics.median(base), statistics.median(timed), ratio

"""Seeded client selection on partition ids (never on Flower's run-specific node ids)."""

from __future__ import annotations

import numpy as np

TRAIN_STREAM, EVALUATE_STREAM = 0, 1


def select_partitions(
    partition_ids: list[int], count: int, seed: int, server_round: int, stream: int
) -> list[int]:
    """Pick `count` distinct partitions, the same for the same (seed, round, stream).

    Returns them sorted, so that everything downstream (messages, logs, the order of
    the floating-point sums in aggregation) is independent of arrival order.
    """
    if not 0 < count <= len(partition_ids):
        raise ValueError(f"cannot select {count} of {len(partition_ids)} clients")
    rng = np.random.default_rng([seed, server_round, stream])
    chosen = rng.choice(sorted(partition_ids), size=count, replace=False)
    return sorted(int(pid) for pid in chosen)

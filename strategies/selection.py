"""Seeded client selection on partition ids (never on Flower's run-specific node ids)."""

from __future__ import annotations

import numpy as np

from experiment.config import ExperimentConfig, selected_count
from strategies.network import NetworkClock

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


class Selector:
    """Who takes part in a phase of a round: `fraction-train` / `fraction-evaluate` of them.

    Under the network's `overcommit` policy a train round selects more clients than the
    updates it keeps.
    """

    def __init__(self, config: ExperimentConfig, clock: NetworkClock | None) -> None:
        self.config = config
        self.clock = clock

    def select(self, phase: str, server_round: int, partitions: list[int]) -> tuple[list[int], int]:
        """(the partitions chosen, in order; the updates the phase needs of them)."""
        fraction, stream = {
            "train": (self.config.fraction_train, TRAIN_STREAM),
            "evaluate": (self.config.fraction_evaluate, EVALUATE_STREAM),
        }[phase]
        keep = count = selected_count(len(partitions), fraction)
        if count == 0:
            return [], 0
        if phase == "train" and self.clock is not None:
            count = self.clock.selection_size(count, len(partitions))
        return select_partitions(partitions, count, self.config.seed, server_round, stream), keep

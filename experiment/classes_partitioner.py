"""The split of Sattler et al.'s STC reference (`classes`), as a flwr-datasets `Partitioner`.

Imported only when that split is asked for: flwr-datasets and `datasets` take over a second to
import, in the ServerApp and in every client process.
"""

from __future__ import annotations

import datasets
import numpy as np
from flwr_datasets.partitioner import Partitioner


class ClassesPartitioner(Partitioner):
    """The split of Sattler et al.'s STC reference: few labels per client, optional skew.

    Client i draws its budget from `classes_per_client` consecutive labels, starting at a
    seeded label (starts are spread evenly over the labels). With `balancedness` < 1 the
    budgets follow balancedness**i, normalised, floored at a tenth of an even share. When a
    label runs out the client continues with the next label, as the reference does.
    """

    def __init__(
        self,
        num_partitions: int,
        classes_per_client: int,
        balancedness: float = 1.0,
        seed: int = 0,
        partition_by: str = "label",
    ) -> None:
        super().__init__()
        self._num_partitions = num_partitions
        self.classes_per_client = classes_per_client
        self.balancedness = balancedness
        self.seed = seed
        self.partition_by = partition_by
        self._indices: list[np.ndarray] | None = None

    @property
    def num_partitions(self) -> int:
        return self._num_partitions

    def load_partition(self, partition_id: int) -> datasets.Dataset:
        if self._indices is None:
            labels = self.dataset.with_format("numpy")[self.partition_by][:].astype(np.int64)
            self._indices = self.split(labels)
        return self.dataset.select(self._indices[partition_id])

    def client_sizes(self, num_samples: int) -> list[int]:
        """Number of samples of each client, largest last (as in the reference)."""
        n = self._num_partitions
        if self.balancedness >= 1.0:
            return [num_samples // n] * n
        fracs = self.balancedness ** np.linspace(0, n - 1, n)
        fracs /= fracs.sum()
        fracs = 0.1 / n + (1 - 0.1) * fracs
        sizes = np.floor(fracs * num_samples + 1e-9)  # 0.085 * 1000 is 85, not 84.999...
        return [int(size) for size in sizes][::-1]

    def split(self, labels: np.ndarray) -> list[np.ndarray]:
        """Return each client's sample indices for the given label array."""
        rng = np.random.default_rng([self.seed, 104729])
        num_labels = int(labels.max()) + 1
        sizes = self.client_sizes(len(labels))
        per_class = [max(1, size // self.classes_per_client) for size in sizes]
        pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in range(num_labels)]
        blocks = -(-self._num_partitions // num_labels)
        starts = np.concatenate([rng.permutation(num_labels) for _ in range(blocks)])
        result = []
        for client, budget in enumerate(sizes):
            label, taken = int(starts[client]), []
            while budget > 0:
                take = min(per_class[client], len(pools[label]), budget)
                taken += pools[label][:take]
                pools[label] = pools[label][take:]
                budget -= take
                label = (label + 1) % num_labels
            result.append(np.sort(np.asarray(taken, dtype=np.int64)))
        return result

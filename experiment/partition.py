"""Split a labelled training set into client partitions (lists of sample indices).

IID and Dirichlet come from flwr-datasets; the STC reference's split (`classes`) is
`ClassesPartitioner`, written against flwr-datasets' `Partitioner` interface. All work on a
small (index, label) table, so the images never enter a `datasets.Dataset`.
"""

from __future__ import annotations

import datasets
import numpy as np
from flwr_datasets.partitioner import DirichletPartitioner, Partitioner


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


def split_indices(
    labels: np.ndarray,
    partitioner: str,
    num_partitions: int,
    seed: int,
    dirichlet_alpha: float = 0.5,
    classes_per_client: int = 2,
    balancedness: float = 1.0,
) -> list[np.ndarray]:
    """Partition sample indices among `num_partitions` clients.

    Parameters
    ----------
    labels : np.ndarray
        Label of every training sample.
    partitioner : str
        `iid`, `dirichlet`, `classes`, or `natural`: the labels are the clients' ids
        (partition i is every sample labelled i; text.py's speaking roles).
    """
    if num_partitions > len(labels):
        raise ValueError(f"cannot split {len(labels)} samples among {num_partitions} clients")
    if partitioner == "natural":
        groups = int(labels.max()) + 1
        if num_partitions > groups:
            raise ValueError(f"cannot split {groups} natural clients among {num_partitions}")
        return [np.flatnonzero(labels == group) for group in range(num_partitions)]
    if partitioner == "iid":
        # IidPartitioner's contiguous shards of the shuffled table, cut here in one pass
        # (a `load_partition` per client costs milliseconds: seconds at 10,000 clients)
        order = np.random.default_rng([seed, 15485863]).permutation(len(labels))
        return [np.sort(shard) for shard in np.array_split(order, num_partitions)]
    table = datasets.Dataset.from_dict(
        {"index": np.arange(len(labels)), "label": labels.astype(np.int64)}
    )
    if partitioner == "dirichlet":
        splitter = DirichletPartitioner(
            num_partitions,
            partition_by="label",
            alpha=dirichlet_alpha,
            min_partition_size=min(10, len(labels) // (2 * num_partitions)),
            seed=seed,
        )
    elif partitioner == "classes":
        splitter = ClassesPartitioner(num_partitions, classes_per_client, balancedness, seed)
    else:
        raise ValueError(f"partitioner '{partitioner}' is not known")
    splitter.dataset = table
    return [
        np.sort(splitter.load_partition(pid).with_format("numpy")["index"][:].astype(np.int64))
        for pid in range(num_partitions)
    ]

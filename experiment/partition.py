"""Split a labelled training set into client partitions (lists of sample indices).

IID is flwr-datasets' IidPartitioner cut in one numpy pass; Dirichlet comes from flwr-datasets;
the STC reference's split (`classes`) is `ClassesPartitioner`, written against flwr-datasets'
`Partitioner` interface. Both work on a small (index, label) table, so the images never enter
a `datasets.Dataset`; flwr-datasets is imported only for them (over a second of start-up).
"""

from __future__ import annotations

import numpy as np


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
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner

    from experiment.classes_partitioner import ClassesPartitioner

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

"""Partitioners: disjoint, complete, labels per client, sizes following balancedness."""

from __future__ import annotations

import numpy as np
import pytest

from experiment.classes_partitioner import ClassesPartitioner
from experiment.partition import split_indices

LABELS = np.repeat(np.arange(10), 600)  # 6000 samples, 600 per label (Fashion-MNIST / 10)


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "classes"])
def test_partitions_are_disjoint_and_complete(partitioner):
    parts = split_indices(LABELS, partitioner, 20, seed=3)
    joined = np.concatenate(parts)
    assert len(parts) == 20
    assert len(joined) == len(np.unique(joined)) == len(LABELS)


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "classes"])
def test_same_seed_same_partitions(partitioner):
    first = split_indices(LABELS, partitioner, 10, seed=5)
    again = split_indices(LABELS, partitioner, 10, seed=5)
    other = split_indices(LABELS, partitioner, 10, seed=6)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_iid_sizes_are_even_and_labels_mixed():
    parts = split_indices(LABELS, "iid", 20, seed=0)
    assert [len(p) for p in parts] == [300] * 20
    assert all(len(np.unique(LABELS[p])) == 10 for p in parts)


@pytest.mark.parametrize("clients", [3, 7, 100])
def test_iid_shards_are_flwr_datasets_iid_partitions(clients):
    # Prepare: what IidPartitioner gives on the shuffled table, one load_partition per client
    import datasets
    from flwr_datasets.partitioner import IidPartitioner

    labels = np.arange(1003) % 10
    order = np.random.default_rng([5, 15485863]).permutation(len(labels))
    splitter = IidPartitioner(clients)
    splitter.dataset = datasets.Dataset.from_dict({"index": order})
    expected = [np.sort(splitter.load_partition(i)["index"]) for i in range(clients)]
    # Execute
    shards = split_indices(labels, "iid", clients, seed=5)
    # Assert
    assert [shard.tolist() for shard in shards] == [shard.tolist() for shard in expected]


@pytest.mark.parametrize("classes_per_client", [1, 2, 5])
def test_classes_per_client_honoured(classes_per_client):
    # 20 clients x 300 samples; label starts spread evenly, so no label runs out.
    parts = split_indices(LABELS, "classes", 20, seed=1, classes_per_client=classes_per_client)
    assert [len(np.unique(LABELS[p])) for p in parts] == [classes_per_client] * 20
    assert all(len(p) == 300 for p in parts)


def test_classes_sizes_follow_balancedness():
    # Hand-computed for 4 clients, 1000 samples, balancedness 0.5:
    # 0.5**[0,1,2,3] = [1, .5, .25, .125], / 1.875 = [.5333, .2667, .1333, .0667],
    # 0.1/4 + 0.9 * that = [.505, .265, .145, .085], x 1000 floored = [505, 265, 145, 85],
    # reversed (largest last): [85, 145, 265, 505].
    partitioner = ClassesPartitioner(4, classes_per_client=2, balancedness=0.5)
    assert partitioner.client_sizes(1000) == [85, 145, 265, 505]
    sizes = [
        len(p)
        for p in split_indices(
            np.repeat(np.arange(10), 100), "classes", 4, seed=0, balancedness=0.5
        )
    ]
    assert sizes == [85, 145, 265, 505]


def test_dirichlet_small_alpha_is_skewed():
    skewed = split_indices(LABELS, "dirichlet", 10, seed=0, dirichlet_alpha=0.1)
    mixed = split_indices(LABELS, "dirichlet", 10, seed=0, dirichlet_alpha=100.0)

    def mean_top_label_share(parts):
        return np.mean([np.bincount(LABELS[p]).max() / len(p) for p in parts])

    assert mean_top_label_share(skewed) > 0.5 > 0.2 > mean_top_label_share(mixed)

"""What a client and the server compute: cached partitions, local training, evaluation."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from experiment.config import ConfigError, ExperimentConfig
from experiment.data import load_dataset
from experiment.dataset import Dataset
from experiment.partition import split_indices

PIXEL_MEAN, PIXEL_STD = 0.2860, 0.3530  # Fashion-MNIST training-set statistics
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # per channel


@dataclass(frozen=True)
class Samples:
    """Model inputs and their int64 labels, as tensors.

    Images: normalised (n, 1, 28, 28) or (n, 3, 32, 32) float32. Text: token windows (n, 65)
    int64 whose labels are their next tokens (n, 64).
    """

    inputs: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> Samples:
        """The same tensors on `device` (no copy when they are there already)."""
        return Samples(self.inputs.to(device), self.labels.to(device))


def compute_device(name: str) -> torch.device:
    """The torch device for the run-config's `device`: "auto" takes CUDA when present.

    Raises
    ------
    ConfigError
        For "cuda" on a machine without CUDA.
    """
    cuda = torch.cuda.is_available()
    if name == "cuda" and not cuda:
        raise ConfigError("device='cuda' but CUDA is not available here; allowed: auto, cpu")
    return torch.device("cuda" if cuda and name != "cpu" else "cpu")


def to_samples(inputs: np.ndarray, labels: np.ndarray) -> Samples:
    """Scale uint8 images to [0, 1] and standardise them (per channel for RGB).

    Grey images (n, 28, 28) get a channel axis; RGB images come as (n, 3, 32, 32). Text comes
    as (n, 65) byte windows: the tokens are the input, bytes 1..64 the labels.
    """
    if inputs.ndim == 2:
        tokens = torch.from_numpy(inputs.astype(np.int64))
        return Samples(tokens, tokens[:, 1:].contiguous())
    x = torch.from_numpy(inputs.astype(np.float32) / 255.0)
    if x.ndim == 4:
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (CIFAR10_MEAN, CIFAR10_STD))
        x = (x - mean) / std
    else:
        x = ((x - PIXEL_MEAN) / PIXEL_STD).unsqueeze(1)
    return Samples(x, torch.from_numpy(labels.astype(np.int64)))


def dataset_of(config: ExperimentConfig) -> Dataset:
    """The config's dataset as numpy arrays (loaded once per process)."""
    hub = config.hub
    return load_dataset(
        config.dataset,
        config.data_dir,
        config.seed,
        hub.image_column,
        hub.label_column,
        hub.text_column,
    )


@lru_cache(maxsize=4)
def partition_indices(config: ExperimentConfig, num_partitions: int) -> tuple[np.ndarray, ...]:
    """All clients' sample indices, computed once per process and config."""
    labels = dataset_of(config).train_labels
    return tuple(
        split_indices(
            labels,
            config.partitioner,
            num_partitions,
            config.seed,
            dirichlet_alpha=config.dirichlet_alpha,
            classes_per_client=config.classes_per_client,
            balancedness=config.balancedness,
        )
    )


@lru_cache(maxsize=1024)
def client_data(config: ExperimentConfig, partition_id: int, num_partitions: int) -> Samples:
    """A client's training tensors, built once per process and partition."""
    data = dataset_of(config)
    indices = partition_indices(config, num_partitions)[partition_id]
    return to_samples(data.train_inputs[indices], data.train_labels[indices])


@lru_cache(maxsize=2)
def test_data(config: ExperimentConfig) -> Samples:
    """The test set as tensors, built once per process."""
    data = dataset_of(config)
    return to_samples(data.test_inputs, data.test_labels)


def minibatches(
    size: int, batch_size: int, epochs: int, steps: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Index batches: `epochs` shuffled passes, or exactly `steps` batches when steps > 0.

    No data, no batch: an empty partition yields nothing (and never spins).
    """
    if size == 0:
        return
    produced, passes = 0, 0
    while (produced < steps) if steps else (passes < epochs):
        order = torch.randperm(size, generator=generator)
        for start in range(0, size, batch_size):
            if steps and produced == steps:
                return
            produced += 1
            yield order[start : start + batch_size]
        passes += 1


def samples_processed(size: int, batch_size: int, epochs: int, steps: int) -> int:
    """Training samples one round processes (what `minibatches` yields, counted)."""
    if size == 0:
        return 0
    if not steps:
        return epochs * size
    full_passes, extra_batches = divmod(steps, math.ceil(size / batch_size))
    return full_passes * size + min(extra_batches * batch_size, size)


def train(
    model: nn.Module,
    data: Samples,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    generator: torch.Generator,
    steps: int = 0,
    proximal_mu: float = 0.0,
) -> float:
    """Minibatch SGD over `epochs` (or `steps` batches); returns the mean batch loss.

    `proximal_mu` > 0 adds FedProx's proximal term (mu / 2) ||w - w_received||^2 (Li et al.,
    2020, eq. 2) to each batch's loss; the loss returned is the data's alone.
    """
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loss_fn = nn.CrossEntropyLoss()
    received = [p.detach().clone() for p in model.parameters()] if proximal_mu else []
    total, count = 0.0, 0
    for batch in minibatches(len(data), batch_size, epochs, steps, generator):
        optimizer.zero_grad()
        loss = loss_fn(model(data.inputs[batch]), data.labels[batch])
        objective = loss
        if received:
            distance = sum(
                ((p - r) ** 2).sum() for p, r in zip(model.parameters(), received, strict=True)
            )
            objective = loss + proximal_mu / 2 * distance
        objective.backward()
        optimizer.step()
        total += loss.item()
        count += 1
    return total / max(count, 1)


def local_train(
    model: nn.Module,
    data: Samples,
    config: ExperimentConfig,
    server_round: int,
    partition_id: int,
    proximal_mu: float = 0.0,
) -> float:
    """One client's local training in one round, as the config says; returns the mean loss."""
    generator = round_generator(config.seed, server_round, partition_id)
    return train(
        model,
        data,
        config.local_epochs,
        config.batch_size,
        config.lr,
        config.momentum,
        generator,
        config.local_steps,
        proximal_mu,
    )


@torch.no_grad()
def evaluate(model: nn.Module, data: Samples, batch_size: int = 1000) -> tuple[float, float]:
    """Return (mean cross-entropy loss, accuracy) on `data`, per label (per token for text)."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        logits = model(data.inputs[start : start + batch_size])
        labels = data.labels[start : start + batch_size]
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(1) == labels).sum())
    return loss_sum / data.labels.numel(), correct / data.labels.numel()


def round_generator(seed: int, server_round: int, partition_id: int) -> torch.Generator:
    """The random stream of one client in one round, keyed by (seed, round, partition)."""
    key = np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(key))

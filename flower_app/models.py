"""The models: `logistic` (the STC reference's linear model) and `cnn` (the FedAvg paper's CNN)."""

from __future__ import annotations

import torch
from torch import nn

NUM_CLASSES = 10


class Logistic(nn.Module):
    """Multinomial logistic regression on the flattened 28x28 image."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.linear = nn.Linear(28 * 28, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class CNN(nn.Module):
    """Two 5x5 conv layers (32, 64 channels, each + 2x2 max-pool), fc 512, fc 10.

    McMahan et al. (2017), "Communication-Efficient Learning of Deep Networks from
    Decentralized Data": 1,663,370 parameters.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


MODEL_BUILDERS = {"logistic": Logistic, "cnn": CNN}


def build_model(name: str, seed: int) -> nn.Module:
    """Build a model with seeded initial weights (same seed, same weights)."""
    torch.manual_seed(seed)
    return MODEL_BUILDERS[name]()

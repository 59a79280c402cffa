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


class CausalLM(nn.Module):
    """A Pythia-14m-shaped GPT-NeoX (random init) whose logits suit `nn.CrossEntropyLoss`.

    EleutherAI's architecture: hidden 128, 6 layers, 4 heads, intermediate 512, vocabulary
    50,304, rotary on a quarter of each head: 14,067,712 parameters, 56,270,848 bytes in
    float32. Input: (batch, 65) token windows; output: (batch, 50304, 64) logits for tokens
    1..64. Needs transformers (`pip install -e ".[pythia]"`), imported here only.
    """

    def __init__(self) -> None:
        super().__init__()
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        config = GPTNeoXConfig(
            vocab_size=50304,
            hidden_size=128,
            num_hidden_layers=6,
            num_attention_heads=4,
            intermediate_size=512,
            rotary_pct=0.25,
            max_position_embeddings=2048,
            tie_word_embeddings=False,
        )
        self.lm = GPTNeoXForCausalLM(config)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=tokens[:, :-1]).logits.transpose(1, 2)


MODEL_BUILDERS = {"logistic": Logistic, "cnn": CNN, "pythia-14m": CausalLM}


def build_model(name: str, seed: int) -> nn.Module:
    """Build a model with seeded initial weights (same seed, same weights)."""
    torch.manual_seed(seed)
    return MODEL_BUILDERS[name]()

"""The models: `logistic` (the STC reference's linear model), `cnn` (the FedAvg paper's CNN),
`vgg11` and `resnet18` for CIFAR-10, `lstm` and `pythia-14m` for text.

Every model's state is float32 parameters alone (no buffers): what travels is what trains,
and nothing (such as batch norm's running statistics) averages badly across clients.
"""

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


VGG11_LAYERS = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
    """VGG-11 for 32x32 RGB (the STC paper's CIFAR-10 model): 8 conv layers, 3 fc layers.

    3x3 convolutions with biases and ReLU, no batch norm, 2x2 max-pool after the marked
    layers (32 -> 1 pixel), then fc 512, fc 512, fc 10: 9,750,922 parameters.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for layer in VGG11_LAYERS:
            if layer == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, int(layer), 3, padding=1), nn.ReLU()]
                channels = int(layer)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def group_norm(channels: int) -> nn.GroupNorm:
    """Group normalisation with 2 groups: no running statistics, weights only."""
    return nn.GroupNorm(2, channels)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with group norm, and a 1x1 projection when the shape changes."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False),
            group_norm(outputs),
            nn.ReLU(),
            nn.Conv2d(outputs, outputs, 3, padding=1, bias=False),
            group_norm(outputs),
        )
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False), group_norm(outputs)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 RGB with group norm (Hsieh et al., 2020, for non-IID FL).

    A 3x3 stem (no max-pool), four stages of two basic blocks (64, 128, 256, 512 channels,
    stride 2 from the second), global average pooling, fc 10: 11,173,962 parameters.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        blocks: list[nn.Module] = [
            nn.Conv2d(3, 64, 3, padding=1, bias=False),
            group_norm(64),
            nn.ReLU(),
        ]
        channels = 64
        for index, width in enumerate((64, 128, 256, 512)):
            stride = 1 if index == 0 else 2
            blocks += [BasicBlock(channels, width, stride), BasicBlock(width, width, 1)]
            channels = width
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class CharLSTM(nn.Module):
    """LEAF's Shakespeare model on bytes: embedding 8, two LSTM layers of 256, fc 256.

    Input: (batch, 65) byte windows; output: (batch, 256, 64) logits for bytes 1..64 (the
    layout `CausalLM` uses): 2,048 + 272,384 + 526,336 + 65,792 = 866,560 parameters.
    """

    def __init__(self, vocabulary: int = 256) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, 8)
        self.lstm = nn.LSTM(8, 256, num_layers=2, batch_first=True)
        self.head = nn.Linear(256, vocabulary)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(self.embedding(tokens[:, :-1]))
        return self.head(hidden).transpose(1, 2)


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


MODEL_BUILDERS = {
    "logistic": Logistic,
    "cnn": CNN,
    "vgg11": VGG11,
    "resnet18": ResNet18,
    "lstm": CharLSTM,
    "pythia-14m": CausalLM,
}


def build_model(name: str, seed: int) -> nn.Module:
    """Build a model with seeded initial weights (same seed, same weights)."""
    torch.manual_seed(seed)
    return MODEL_BUILDERS[name]()

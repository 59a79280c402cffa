"""Uplink codecs as plugins: one object, one module, registered by name.

A codec object has a client half, `encode` (a model update -> the arrays that travel and
their exact bits), and a server half, `decode` (those arrays -> the update). The generic
client mod (mods/codec_mod.py) runs the client half, with error feedback on the client's
state when the codec asks for it; the generic server half (strategies/plugin.py) decodes
each reply and hands the models to whichever Flower strategy the run wraps. A run-config
picks one with `uplink = "<name>"`. Both sides import this module, never Flower.

Built-in plugins live in protocol/plugins/ (randomk, qsgd, efsignsgd, fp16, bf16); a user's
own are modules named in `codec-modules` (imported by the ServerApp and every ClientApp). See
docs/write-a-codec.md.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod

import numpy as np

from fedcodec.encoded import Encoded

BUILT_IN = tuple(  # modules whose codecs are always registered
    f"protocol.plugins.{name}" for name in ("randomk", "qsgd", "signs", "half")
)
RESERVED = ("none", "stc", "topk", "quant", "segments")  # built into the mods and strategies

_REGISTRY: dict[str, UplinkCodec] = {}


class UplinkCodec(ABC):
    """A codec of client updates (trained model - received model), both halves.

    `error_feedback`: the client keeps what the codec did not send (residual + update -
    decode(encode(...))) in its state and adds it to its next update.
    """

    error_feedback: bool = False

    @abstractmethod
    def encode(self, update: list[np.ndarray], rng: np.random.Generator) -> Encoded:
        """Client half: the arrays that travel for `update`, and their exact payload bits.

        `rng` is the client's stream for this round, keyed (seed, round, partition): the same
        in every rerun. Never modify `update`.
        """

    @abstractmethod
    def decode(
        self, arrays: dict[str, np.ndarray], shapes: list[tuple[int, ...]]
    ) -> tuple[list[np.ndarray], int]:
        """Server half: the update (float32 tensors of `shapes`) and the payload bits read.

        Raise fedcodec.checks.DecodeError when the arrays are not a valid encoding: the reply
        is then logged `rejected` with its reason.
        """


def register(name: str, codec: UplinkCodec) -> UplinkCodec:
    """Make `codec` the uplink codec `name` (`uplink = "<name>"`); returns it."""
    if name in RESERVED:
        raise ValueError(f"codec name '{name}' is built in; choose another")
    _REGISTRY[name] = codec
    return codec


def load(modules: str = "") -> None:
    """Import the built-in plugins and those in `modules` (comma-separated module names)."""
    for module in (*BUILT_IN, *filter(None, (m.strip() for m in modules.split(",")))):
        importlib.import_module(module)


def registered(name: str) -> UplinkCodec | None:
    """The plugin registered as `name`, if any."""
    load()
    return _REGISTRY.get(name)


def names() -> tuple[str, ...]:
    """Every registered plugin's name."""
    load()
    return tuple(_REGISTRY)

"""The server half of the uplink plugins (protocol/codecs.py), around any Flower strategy.

The train config names the plugin (and the seed of the clients' streams); each reply is
decoded by the plugin's `decode` and the models go to the wrapped strategy (strategies.coded).
The downlink is the dense model.
"""

from __future__ import annotations

import numpy as np

from protocol import codecs, keys
from strategies.coded import CodedFedAvg, DecodedUpdate


class PluginCodec(CodedFedAvg):
    """Any Flower strategy over updates encoded by a registered plugin (`uplink`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.name = self.config.axes.uplink
        codec = codecs.registered(self.name)
        if codec is None:
            raise ValueError(f"uplink='{self.name}' is not a registered codec")
        self.codec = codec

    def codec_entries(self) -> dict:
        return {keys.CODEC: self.name, keys.SEED: self.config.seed}

    def decode_update(
        self, server_round: int, partition_id: int, arrays: dict[str, np.ndarray]
    ) -> DecodedUpdate:
        tensors, bits = self.codec.decode(arrays, list(self._global_shapes.values()))
        return DecodedUpdate(tensors, bits, self.name)

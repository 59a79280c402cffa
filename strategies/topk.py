"""The `topk` preset: top-k sparsified updates up (float32 values, coded positions), FedAvg.

STC's comparison codec (mods/topk_mod.py): the server decodes each update, averages them
weighted by examples and adds the mean to the global model, which goes down dense.
"""

from __future__ import annotations

import numpy as np

from fedcodec import topk
from protocol.topk import CODEC, codec_entries
from strategies.coded import CodedFedAvg, DecodedUpdate


class TopkFedAvg(CodedFedAvg):
    """FedAvg over top-k sparsified updates."""

    def codec_entries(self) -> dict:
        return codec_entries(self.config.topk.p_up, self.config.topk.error_feedback)

    def decode_update(
        self, server_round: int, partition_id: int, arrays: dict[str, np.ndarray]
    ) -> DecodedUpdate:
        tensors, bits = topk.decode_arrays(arrays, list(self._global_shapes.values()))
        return DecodedUpdate(tensors, bits, CODEC)

"""The `quant` preset: quantized updates up, optionally a quantized model down, FedAvg between.

Clients quantize their update as the train message says (mods/quant_mod.py). The server decodes
each update, averages them weighted by examples and adds the mean to its float32 model. With
`quant.down-bits` > 0 every client receives the global model quantized to that many bits
(uniform) and trains from it; the server keeps its model in float32. With a progressive uplink,
`quant.refine-loss` loses the refinement on a seeded draw per (round, client), and with a
simulated network under `net.policy = "partial"` a refinement that misses the deadline is lost:
the server then uses the base alone and logs the reply as `partial`.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedcodec import quant
from fedcodec.checks import expect_names
from protocol import keys
from protocol.quant import quantized_downlink, spec_config
from strategies.accounting import FLOAT32_BYTES, dense_fields
from strategies.coded import CodedFedAvg, DecodedUpdate

REFINE_LOSS_STREAM = 3


class QuantFedAvg(CodedFedAvg):
    """FedAvg with quantized uplinks (and optionally a quantized downlink)."""

    round_only = (*CodedFedAvg.round_only, "_down")  # the round's quantized model, sent to all

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.spec = self.config.quant.spec.validate()
        self._down: tuple[int, ArrayRecord, dict, dict] | None = None  # round, record, ...

    def _quantized_model(self, server_round: int) -> tuple[ArrayRecord, dict, dict]:
        """This round's quantized global model (encoded once, sent to every client)."""
        if self._down is None or self._down[0] != server_round:
            bits = self.config.quant.down_bits
            record, entries, encoded = quantized_downlink(self._global, bits)
            fields = {
                "codec": f"uniform{bits}",
                "payload_bits": encoded.payload_bits,
                "dense_bytes": sum(v.size for v in self._global.values()) * FLOAT32_BYTES,
            }
            self._down = (server_round, record, entries, fields)
        return self._down[1:]

    def downlink(
        self,
        server_round: int,
        phase: str,
        partition_id: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
    ) -> tuple[RecordDict, dict]:
        """The train config with the uplink spec; the model dense or quantized."""
        if phase != "train":
            return super().downlink(server_round, phase, partition_id, arrays, config)
        client_config = self.train_config(config)
        if not self.config.quant.down_bits:
            content = RecordDict({keys.ARRAYS: arrays, keys.CONFIG: client_config})
            return content, dense_fields(arrays)
        record, entries, fields = self._quantized_model(server_round)
        client_config = ConfigRecord(dict(client_config) | entries)
        return RecordDict({keys.DOWN_QUANT: record, keys.CONFIG: client_config}), fields

    def codec_entries(self) -> dict:
        return spec_config(self.spec, self.config.quant.error_feedback) | {
            keys.SEED: self.config.seed
        }

    def decode_update(
        self, server_round: int, partition_id: int, arrays: dict[str, np.ndarray]
    ) -> DecodedUpdate:
        expect_names(arrays, quant.array_names(self.spec), self.spec.label)
        status, unused_bits = "delivered", 0
        shapes = list(self._global_shapes.values())
        if self.spec.refined_arrays and self._refinement_lost(server_round, partition_id):
            arrays, status = quant.drop_refinement(arrays, self.spec), "partial"
            unused_bits = sum(math.prod(shape) for shape in shapes) * self.spec.refine_bits
        tensors, bits = quant.decode_arrays(arrays, shapes, self.spec)
        return DecodedUpdate(tensors, bits, self.spec.label, status, unused_bits)

    def _refinement_lost(self, server_round: int, partition_id: int) -> bool:
        """Lost to the network's deadline, or to the seeded `quant.refine-loss` draw."""
        if partition_id in self.timer.late_refinements:
            return True
        loss = self.config.quant.refine_loss
        rng = np.random.default_rng(
            [self.config.seed, server_round, partition_id, REFINE_LOSS_STREAM]
        )
        return bool(rng.random() < loss)

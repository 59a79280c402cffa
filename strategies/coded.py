"""Base of the presets whose clients send encoded updates (trained - received model).

A reply is checked by decoding it (undecodable or non-finite: `rejected`); the decoded updates
are combined (`combine`: averaged weighted by examples, in partition order), and the preset
decides how the global model moves (`apply_update`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord

from fedcodec.checks import DecodeError
from protocol import keys
from strategies.accounting import FLOAT32_BYTES
from strategies.bandwidth_fedavg import BandwidthFedAvg
from strategies.replies import TRAIN_METRICS, UPDATE_RECORDS, has_update_records


@dataclass(frozen=True)
class DecodedUpdate:
    """A client's update as the server decoded it."""

    tensors: list[np.ndarray]
    payload_bits: int  # the exact bits decoded
    codec: str
    status: str = "delivered"  # or "partial": only part of what was sent is used
    unused_bits: int = 0  # sent but not used (a progressive refinement that came too late)


class CodedFedAvg(BandwidthFedAvg):
    """FedAvg over encoded updates; subclasses say how to decode and how to apply the mean."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._decoded: dict[int, DecodedUpdate] = {}  # partition -> its update, this phase

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self._decoded = {}  # a new phase: nothing decoded yet
        return super().aggregate_train(server_round, replies)

    def decode_update(
        self, server_round: int, partition_id: int, arrays: dict[str, np.ndarray]
    ) -> DecodedUpdate:
        """Decode one reply's arrays; raise DecodeError (fedcodec.checks) when they do not."""
        raise NotImplementedError

    def apply_update(self, server_round: int, mean: list[np.ndarray]) -> dict[str, np.ndarray]:
        """The next global model from the weighted mean of the decoded updates."""
        return {name: self._global[name] + m for name, m in zip(self._global, mean, strict=True)}

    def _problem_in(self, reply: Message) -> str:
        """Decode the reply (kept for aggregation when usable); what is wrong with it, if any."""
        if not has_update_records(reply.content):
            return UPDATE_RECORDS
        arrays, metrics = reply.content[keys.ARRAYS], reply.content[keys.METRICS]
        try:
            decoded = self.decode_update(
                self._round["round"],
                self._partition(reply),
                {name: array.numpy() for name, array in arrays.items()},
            )
        except DecodeError as error:
            return f"undecodable update: {error}"
        if not all(np.isfinite(t).all() for t in decoded.tensors):
            return "NaN or inf in the update"
        problem = self.check_metrics(reply, metrics, TRAIN_METRICS)
        if not problem:
            self._decoded[self._partition(reply)] = decoded
        return problem

    def update_norm(self, reply: Message) -> float | None:
        """L2 norm of the decoded update."""
        tensors = self._decoded[self._partition(reply)].tensors
        return math.sqrt(sum(float(np.sum(t.astype(np.float64) ** 2)) for t in tensors))

    def delivery_status(self, reply: Message) -> str:
        return self._decoded[self._partition(reply)].status

    def reply_fields(self, phase: str, reply: Message) -> dict:
        if phase != self.upload_phase:
            return super().reply_fields(phase, reply)
        decoded = None if reply.has_error() else self._decoded.get(self._partition(reply))
        if decoded is None:
            return {}
        dense = sum(t.size for t in decoded.tensors) * FLOAT32_BYTES
        return {
            "codec": decoded.codec,
            "payload_bits": decoded.payload_bits + decoded.unused_bits,
            "unused_payload_bits": decoded.unused_bits,
            "dense_bytes": dense,
        }

    def combine(self, server_round: int, accepted: list[Message]) -> list[np.ndarray]:
        """One update from the decoded replies: their mean weighted by examples."""
        weights = np.array([r.content[keys.METRICS][keys.NUM_EXAMPLES] for r in accepted], float)
        updates = [self._decoded[self._partition(r)].tensors for r in accepted]
        return [
            (sum(w * u[i] for w, u in zip(weights, updates, strict=True)) / weights.sum()).astype(
                np.float32
            )
            for i in range(len(updates[0]))
        ]

    def aggregate_updates(
        self, server_round: int, accepted: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The combined update of the accepted replies (partition order), applied by the preset."""
        update = self.combine(server_round, accepted)
        new_global = self.apply_update(server_round, update)
        metrics = self.train_metrics_aggr_fn([r.content for r in accepted], self.weighted_by_key)
        return ArrayRecord({n: Array(v) for n, v in new_global.items()}), metrics

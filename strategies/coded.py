"""Base of the codecs whose clients send encoded updates (trained - received model).

A reply is checked by decoding it (undecodable or non-finite: `rejected`); what the server
keeps of it until aggregation is its facts (bits, status, norm), not its tensors. The wrapped
Flower strategy then aggregates the decoded models. One whose rule starts from FedAvg's
weighted mean (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad) receives that mean as
one reply, summed as the accepted updates are decoded again one at a time (`combine`, in
partition order): a round holds one decoded update besides the sum. The others (FedMedian,
FedTrimmedAvg, Krum, MultiKrum, Bulyan, QFedAvg) need every model: they receive one decoded
model per accepted reply. A codec may then move the global model otherwise than the strategy
says (`moved`: STC sends a compressed step down and moves by exactly that).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord

from fedcodec.checks import DecodeError
from protocol import keys
from strategies.accounting import FLOAT32_BYTES
from strategies.aggregation import model_reply, streams_mean
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
    norm: float = 0.0  # L2 norm of the tensors (set once checked)
    dense_bytes: int = 0  # float32 size of the tensors (set once checked)


class CodedFedAvg(BandwidthFedAvg):
    """FedAvg over encoded updates; subclasses say how to decode and how to apply the mean."""

    round_only = ("_decoded",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._decoded: dict[int, DecodedUpdate] = {}  # partition -> its facts, no tensors

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

    def moved(self, server_round: int, aggregated: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The next global model, given the wrapped strategy's; here that one."""
        return aggregated

    def update_problem(self, reply: Message) -> str:
        """Decode the reply (its facts kept when usable); what is wrong with it, if any."""
        if not has_update_records(reply.content):
            return UPDATE_RECORDS
        try:
            decoded = self._decode(reply)
        except DecodeError as error:
            return f"undecodable update: {error}"
        if not all(np.isfinite(t).all() for t in decoded.tensors):
            return "NaN or inf in the update"
        problem = self.check_metrics(reply, reply.content[keys.METRICS], TRAIN_METRICS)
        if not problem:
            tensors = decoded.tensors
            self._decoded[self._partition(reply)] = replace(
                decoded,
                tensors=[],
                norm=math.sqrt(sum(float(np.sum(t.astype(np.float64) ** 2)) for t in tensors)),
                dense_bytes=sum(t.size for t in tensors) * FLOAT32_BYTES,
            )
        return problem

    def _decode(self, reply: Message) -> DecodedUpdate:
        """The reply's update, decoded (again, at aggregation: decoding is deterministic)."""
        arrays = reply.content[keys.ARRAYS]
        return self.decode_update(
            self._round["round"],
            self._partition(reply),
            {name: array.numpy() for name, array in arrays.items()},
        )

    def update_norm(self, reply: Message) -> float | None:
        """L2 norm of the decoded update."""
        return self._decoded[self._partition(reply)].norm

    def delivery_status(self, reply: Message) -> str:
        return self._decoded[self._partition(reply)].status

    def reply_fields(self, phase: str, reply: Message) -> dict:
        if phase != self.upload_phase:
            return super().reply_fields(phase, reply)
        decoded = None if reply.has_error() else self._decoded.get(self._partition(reply))
        if decoded is None:
            return {}
        return {
            "codec": decoded.codec,
            "payload_bits": decoded.payload_bits + decoded.unused_bits,
            "unused_payload_bits": decoded.unused_bits,
            "dense_bytes": decoded.dense_bytes,
        }

    def combine(self, server_round: int, accepted: list[Message]) -> list[np.ndarray]:
        """One update from the replies: their mean weighted by examples, summed as decoded."""
        weights = np.array([r.content[keys.METRICS][keys.NUM_EXAMPLES] for r in accepted], float)
        total: list[np.ndarray] | None = None
        for weight, reply in zip(weights, accepted, strict=True):
            weighted = [weight * t for t in self._decode(reply).tensors]
            total = (
                weighted if total is None else [a + b for a, b in zip(total, weighted, strict=True)]
            )
        return [(t / weights.sum()).astype(np.float32) for t in total]

    def aggregate_updates(
        self, server_round: int, accepted: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The wrapped strategy's model from the decoded replies (partition order), as the
        codec moves it; the metrics are the replies' weighted mean."""
        aggregation = self.aggregation
        contents = [r.content for r in accepted]
        metrics = aggregation.train_metrics_aggr_fn(contents, keys.NUM_EXAMPLES)
        if streams_mean(aggregation):
            examples = sum(content[keys.METRICS][keys.NUM_EXAMPLES] for content in contents)
            mean_metrics = MetricRecord(dict(metrics) | {keys.NUM_EXAMPLES: examples})
            mean = self.combine(server_round, accepted)
            models = [model_reply(self._plus_global(mean), mean_metrics)]
        else:
            models = [
                model_reply(self._plus_global(self._decode(r).tensors), r.content[keys.METRICS])
                for r in accepted
            ]
        arrays, _ = aggregation.aggregate_train(server_round, models)
        # in the dtypes clients train in (FedAdam's float64 would break STC's shared copy)
        aggregated = {
            name: arrays[name].numpy().astype(dtype, copy=False)
            for name, dtype in self.model_dtypes.items()
        }
        new_global = self.moved(server_round, aggregated)
        return ArrayRecord({n: Array(v) for n, v in new_global.items()}), metrics

    def _plus_global(self, update: list[np.ndarray]) -> dict[str, np.ndarray]:
        """The model a client would hold: the global model plus a decoded update."""
        return {name: self._global[name] + u for name, u in zip(self._global, update, strict=True)}

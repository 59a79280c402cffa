"""The `stc` preset: sparse ternary compression on the uplink and the downlink.

Clients send STC-encoded updates (mods/stc_mod.py). The server decodes them, averages them
weighted by examples, runs its own error feedback and STC at `stc.p-down`, and moves the global
model by exactly the compressed delta it will send, so that server and clients hold the same
model. The downlink is honest under partial participation: a client receives the compressed
deltas of every round since its last sync, or the dense model when that is smaller.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedcodec import stc
from fedcodec.feedback import error_feedback_step
from mods import keys
from strategies.accounting import FLOAT32_BYTES, dense_bytes, dense_fields
from strategies.bandwidth_fedavg import BandwidthFedAvg, examples_problem

STC_PARTS = ("bits", "counts", "means")


class StcFedAvg(BandwidthFedAvg):
    """FedAvg with STC on both links, error feedback on each side, honest catch-up downlinks."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.deltas: dict[int, stc.Encoded] = {}  # round -> the compressed delta it applied
        self.synced: dict[int, int] = {}  # partition -> round of the model it holds
        self.residual: list[np.ndarray] | None = None
        self._decoded: dict[int, tuple[list[np.ndarray], int]] = {}
        self._global: dict[str, np.ndarray] = {}

    # ---------------------------------------------------------------- downlink
    def downlink(
        self,
        server_round: int,
        phase: str,
        partition_id: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
    ) -> tuple[RecordDict, dict]:
        """Catch-up deltas since the client's last sync, or the dense model if smaller."""
        if phase != "train":
            return super().downlink(server_round, phase, partition_id, arrays, config)
        settings = self.config.stc
        client_config = ConfigRecord(
            dict(config)
            | {
                keys.CODEC: "stc",
                keys.STC_P_UP: settings.p_up,
                keys.STC_APPROX: settings.approx,
                keys.STC_ACCUMULATE_UP: settings.accumulate_up,
                keys.SEED: self.config.seed,
            }
        )
        last = self.synced.get(partition_id)
        # rounds without an accepted update left the model unchanged and sent nothing
        missed = (
            [] if last is None else [r for r in range(last + 1, server_round) if r in self.deltas]
        )
        catch_up_bits = sum(self.deltas[r].payload_bits for r in missed)
        self.synced[partition_id] = server_round - 1
        dense_bits = 8 * dense_bytes(arrays)
        if last is None or catch_up_bits >= dense_bits:
            content = RecordDict({keys.ARRAYS: arrays, keys.CONFIG: client_config})
            return content, dense_fields(arrays)
        client_config[keys.DOWN_ROUNDS] = missed
        deltas = ArrayRecord(
            {
                f"{r}.{part}": Array(self.deltas[r].arrays[part])
                for r in missed
                for part in STC_PARTS
            }
        )
        content = RecordDict({keys.DOWN: deltas, keys.CONFIG: client_config})
        fields = {"codec": "stc", "payload_bits": catch_up_bits, "dense_bytes": dense_bits // 8}
        return content, fields

    # ---------------------------------------------------------------- uplink
    def _problem_in(self, content: RecordDict) -> str:
        arrays = content.array_records.get(keys.ARRAYS)
        metrics = content.metric_records.get(keys.METRICS)
        if arrays is None or metrics is None or set(arrays) != set(STC_PARTS):
            return "expected an STC update (bits, counts, means) and metrics"
        try:
            decoded = stc.decode_arrays(
                {p: arrays[p].numpy() for p in STC_PARTS}, list(self._global_shapes.values())
            )
        except ValueError as error:
            return f"undecodable STC update: {error}"
        if not all(np.isfinite(t).all() for t in decoded[0]):
            return "NaN or inf in the update"
        problem = examples_problem(metrics)
        if problem:
            return problem
        self._decoded[id(content)] = decoded
        return ""

    def reply_fields(self, reply: Message) -> dict:
        decoded = None if reply.has_error() else self._decoded.get(id(reply.content))
        if decoded is None:
            return {}
        dense = sum(t.size for t in decoded[0]) * FLOAT32_BYTES
        return {"codec": "stc", "payload_bits": decoded[1], "dense_bytes": dense}

    def aggregate_updates(
        self, server_round: int, accepted: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Weighted mean of the decoded updates, then server error feedback and STC."""
        weights = np.array([r.content[keys.METRICS][keys.NUM_EXAMPLES] for r in accepted], float)
        updates = [self._decoded.pop(id(r.content))[0] for r in accepted]
        self._decoded.clear()
        mean = [
            sum(w * u[i] for w, u in zip(weights, updates, strict=True)) / weights.sum()
            for i in range(len(updates[0]))
        ]
        mean = [m.astype(np.float32) for m in mean]
        settings = self.config.stc
        captured: list[stc.Encoded] = []

        def compress(tensors: list[np.ndarray]) -> list[np.ndarray]:
            rng = np.random.default_rng([self.config.seed, server_round, 2])
            captured.append(stc.encode(tensors, settings.p_down, approx=settings.approx, rng=rng))
            return stc.decode(captured[-1], [t.shape for t in tensors])

        if settings.accumulate_down:
            residual = self.residual or [np.zeros_like(m) for m in mean]
            sent, self.residual = error_feedback_step(residual, mean, compress)
        else:
            sent = compress(mean)
        self.deltas[server_round] = captured[-1]
        names = list(self._global_shapes)
        new_global = {
            name: self._global[name] + delta for name, delta in zip(names, sent, strict=True)
        }
        metrics = self.train_metrics_aggr_fn([r.content for r in accepted], self.weighted_by_key)
        return ArrayRecord({n: Array(v) for n, v in new_global.items()}), metrics

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """Remember the dense global model this round starts from."""
        self._global = {name: array.numpy() for name, array in arrays.items()}
        return super().configure_train(server_round, arrays, config, grid)

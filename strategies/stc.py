"""The `stc` preset: sparse ternary compression on the uplink and the downlink.

Clients send STC-encoded updates (mods/stc_mod.py; the format: protocol/stc.py). The server
decodes them, averages them weighted by examples, runs its own error feedback and STC at
`stc.p-down`, and moves the global model by exactly the compressed delta it will send, so that
server and clients hold the same model. The downlink is honest under partial participation: a
client receives the compressed deltas of every round since its last sync, or the dense model
when that message is smaller.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedcodec import stc
from fedcodec.feedback import error_feedback_step
from ledger.levels import down_transport_bytes
from protocol import keys
from protocol.stc import (
    CODEC,
    RESYNC,
    RESYNC_CODEC,
    catch_up_content,
    codec_entries,
    describe_version,
    model_version,
)
from strategies.accounting import dense_bytes, dense_fields
from strategies.coded import CodedFedAvg, DecodedUpdate


class StcFedAvg(CodedFedAvg):
    """FedAvg with STC on both links, error feedback on each side, honest catch-up downlinks."""

    round_only = (*CodedFedAvg.round_only, "_version", "_stale")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.deltas: dict[int, stc.Encoded] = {}  # round -> the compressed delta it applied
        self.synced: dict[int, int] = {}  # partition -> round of the model it holds (answered)
        self._resync: set[int] = set()  # partitions that lost their copy: dense next time
        self.residual: list[np.ndarray] | None = None
        self._version = 0  # of the global model the round's clients must train from
        self._stale: dict[int, str] = {}  # partition -> why its update is left out this round

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = super().configure_train(server_round, arrays, config, grid)
        self._version = model_version(server_round - 1, self._global.values())
        return messages

    def rehomed(self, partition_ids: Iterable[int]) -> None:
        """Partitions now on another node (its state is gone): the dense model next time."""
        for partition_id in partition_ids:
            self._send_dense(partition_id)

    def _send_dense(self, partition_id: int) -> None:
        """The client holds no usable copy: its next train message is the dense model."""
        self.synced.pop(partition_id, None)
        self._resync.add(partition_id)

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
        client_config = self.train_config(config)
        last = self.synced.get(partition_id)
        dense = RecordDict({keys.ARRAYS: arrays, keys.CONFIG: client_config})
        if last is None:
            fields = dense_fields(arrays)
            if partition_id in self._resync:
                self._resync.discard(partition_id)
                fields["codec"] = RESYNC_CODEC
            return dense, fields
        # rounds without an accepted update left the model unchanged and sent nothing
        missed = [r for r in range(last + 1, server_round) if r in self.deltas]
        deltas = {r: self.deltas[r] for r in missed}
        catch_up = catch_up_content(deltas, ConfigRecord(dict(client_config)))
        # the choice goes by what travels: every delta array is objects and requests of its own
        if down_transport_bytes(self.on_the_wire(catch_up)) >= down_transport_bytes(
            self.on_the_wire(dense)
        ):
            return dense, dense_fields(arrays)
        catch_up_bits = sum(self.deltas[r].payload_bits for r in missed)
        fields = {"codec": CODEC, "payload_bits": catch_up_bits, "dense_bytes": dense_bytes(arrays)}
        return catch_up, fields

    def codec_entries(self) -> dict:
        settings = self.config.stc
        return codec_entries(
            settings.p_up, settings.approx, settings.accumulate_up, self.config.seed
        )

    # ---------------------------------------------------------------- uplink
    def opened(self, server_round: int, replies: list[Message]) -> None:
        """Note who holds which model before the replies are checked.

        A client that answered from the server's model holds this round's model, whatever
        the server makes of its update; one that failed kept its old copy, unless it says it
        has none (`RESYNC`). One that trained from another model (round or fingerprint) is
        left out and gets the dense model next time.
        """
        self._stale = {}
        for reply in replies:
            partition_id = self._partition(reply)
            if reply.has_error():
                if RESYNC in reply.error.reason:
                    self._send_dense(partition_id)
                continue
            problem = self._model_problem(reply)
            if problem:
                self._stale[partition_id] = problem
                self._send_dense(partition_id)
            else:
                self.synced[partition_id] = server_round - 1

    def _model_problem(self, reply: Message) -> str:
        """How the model a reply trained from differs from the server's ("" if it does not)."""
        metrics = reply.content.metric_records.get(keys.METRICS, MetricRecord())
        said = metrics.get(keys.MODEL)
        if said == self._version:
            return ""
        return (
            f"trained from {describe_version(said)}, not the server's "
            f"{describe_version(self._version)}: the dense model follows"
        )

    def update_problem(self, reply: Message) -> str:
        """A reply from another model is left out; the others lose their `MODEL` metric (the
        ledger measured it) and are checked as any update."""
        stale = self._stale.get(self._partition(reply))
        if stale:
            return stale
        metrics = reply.content.metric_records.get(keys.METRICS, MetricRecord())
        metrics.pop(keys.MODEL, None)
        return super().update_problem(reply)

    def decode_update(
        self, server_round: int, partition_id: int, arrays: dict[str, np.ndarray]
    ) -> DecodedUpdate:
        tensors, bits = stc.decode_arrays(arrays, list(self._global_shapes.values()))
        return DecodedUpdate(tensors, bits, CODEC)

    def moved(self, server_round: int, aggregated: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Server error feedback and STC at p-down on the wrapped strategy's step; the model
        moves by exactly what is sent."""
        mean = [aggregated[name] - value for name, value in self._global.items()]
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
        return {name: self._global[name] + s for name, s in zip(self._global, sent, strict=True)}

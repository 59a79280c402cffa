"""FedAvg that measures every message it sends and receives, and selects on partition ids.

It composes small parts: a `Directory` learns `node_id -> partition_id` once with a query
round (phase `query`, round 0); a `Selector` picks partitions with a seeded generator each
round; the `Ledger` writes one bandwidth.csv row per message sent and per reply received; a
`RoundTimer` times each train phase on the simulated network (`net.*`), whose straggler policy
may mark updates `dropped`; `strategies.replies` says what makes a reply usable. Replies that
failed or carry garbage are logged (`failed` / `rejected`) and left out. A message's row waits
for its reply, so that the sizes the client measured (the wire mod) land beside the
server's. Each round is one row in rounds.csv.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from experiment.config import ExperimentConfig
from experiment.recorder import Recorder
from experiment.task import partition_indices, samples_processed
from ledger.book import Ledger, ReplySizes
from protocol import keys, wire
from strategies.accounting import dense_fields
from strategies.aggregation import build_aggregation, train_entries
from strategies.discovery import Directory
from strategies.network import NetworkClock, RoundTimer, Upload
from strategies.replies import (
    ACCEPTED,
    EVALUATE_METRICS,
    TRAIN_METRICS,
    UPDATE_RECORDS,
    dense_model_problem,
    examples_problem,
    has_update_records,
    metrics_problem,
    outliers,
)
from strategies.selection import Selector

MESSAGE_TYPES = {"train": MessageType.TRAIN, "evaluate": MessageType.EVALUATE}
NOT_CHECKPOINTED = ("config", "recorder", "ledger", "directory", "partition_sizes")
# (the wrapped strategy is checkpointed: FedAdam's moments, FedAvgM's momentum go on)
ROUND_ONLY = ("_round", "_global", "_global_shapes", "_packed")  # set anew every round


class BandwidthFedAvg(Strategy):
    """A Flower strategy wrapped with exact per-message byte logs and seeded selection.

    Parameters
    ----------
    config : ExperimentConfig
        The validated run-config (fractions, seed, rounds).
    recorder : Recorder
        Where message and round rows go.
    aggregation : Strategy, optional
        The Flower strategy that adds its train config entries and aggregates the accepted
        (decoded) replies; by default the one `config` names (strategies.aggregation).
    """

    upload_phase = "train"  # the phase whose replies carry the updates
    round_only: tuple[str, ...] = ()  # a preset's attributes of one round (no checkpoint)

    def __init__(
        self, config: ExperimentConfig, recorder: Recorder, aggregation: Strategy | None = None
    ) -> None:
        self.config = config
        self.aggregation = aggregation or build_aggregation(config)
        self.recorder = recorder
        self.clock = NetworkClock(config.net, config.seed) if config.net.simulated else None
        self.directory = Directory()
        self.selector = Selector(config, self.clock)
        self.timer = RoundTimer(self.clock)
        self.ledger = Ledger(recorder.log_message, self.timer.sim_times)
        self.partition_sizes: tuple[int, ...] = ()  # samples of each partition
        self._round: dict = {}
        self._global: dict[str, np.ndarray] = {}
        self._global_shapes: dict[str, tuple[int, ...]] = {}
        self.model_dtypes: dict[str, np.dtype] = {}  # of the initial model: clients train in them
        self._keep = 0  # updates a round needs (fewer than selected under overcommit)
        self._packed: dict[tuple, tuple[RecordDict, RecordDict]] = {}  # see on_the_wire

    # ------------------------------------------------------------------ discovery
    def discover_partitions(self, grid: Grid, logged: bool = True) -> int:
        """Learn which node holds which partition (round 0), then each partition's size.

        `logged=False` (a resumed run, whose round 0 is on record): the query messages are
        neither logged nor counted.
        """
        self._start_round(0)
        ledger = self.ledger if logged else Ledger(lambda row: None, self.timer.sim_times)
        clients = self.directory.discover(grid, ledger)
        if self.clock is not None:
            self.clock.start(sorted(self.directory.node_of))
        self.partition_sizes = tuple(map(len, partition_indices(self.config, clients)))
        return clients

    def rehomed(self, partition_ids: list[int]) -> None:
        """Partitions now on another node, without the old node's state; here nothing to do."""

    # ------------------------------------------------------------------ training
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Select partitions (seeded) and send each the global model; log each message.

        Nodes that joined since the last round are asked for their partition first. The
        wrapped strategy's own train config entries (FedProx's `proximal-mu`) go along.
        """
        self._start_round(server_round)
        self.timer.begin_round()
        timeout_s = self.config.round_timeout_s
        self.rehomed(self.directory.refresh(grid, self.ledger, server_round, timeout_s))
        self._global = {name: array.numpy() for name, array in arrays.items()}
        self._global_shapes = {name: value.shape for name, value in self._global.items()}
        if not self.model_dtypes:
            self.model_dtypes = {name: value.dtype for name, value in self._global.items()}
        config = ConfigRecord(train_entries(self.aggregation, server_round, arrays, config))
        messages = self._broadcast(server_round, "train", arrays, config)
        self._round["selected"] = len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Log every reply, leave out failed, late or malformed ones, FedAvg the rest."""
        accepted = []
        replies = self._sorted(replies)
        sizes = [self.ledger.arrived(reply) for reply in replies]
        self.opened(server_round, replies)
        network_status = self._time_round(self.upload_phase, replies, sizes)
        statuses = [
            "dropped"
            if network_status.get(self._partition(reply)) == "dropped"
            else self._check_train_reply(reply, reply_sizes)
            for reply, reply_sizes in zip(replies, sizes, strict=True)
        ]
        self._reject_outliers(replies, statuses)
        for reply, reply_sizes, status in zip(replies, sizes, statuses, strict=True):
            self._log_reply(server_round, self.upload_phase, reply, status, reply_sizes)
            if status in ACCEPTED:
                accepted.append(reply)
        self.ledger.flush_pending(self.upload_phase)
        self._round["delivered"] = len(accepted)
        if not accepted:
            log(WARNING, "round %s: no usable update; the global model is kept", server_round)
            return None, None
        arrays, metrics = self.aggregate_updates(server_round, accepted)
        if metrics is not None:
            self._round["train_loss"] = float(metrics.get(keys.TRAIN_LOSS, float("nan")))
        return arrays, metrics

    def opened(self, server_round: int, replies: list[Message]) -> None:
        """The replies of the upload phase, measured and in Flower's layout, before any check;
        here nothing to note."""

    def _time_round(
        self, phase: str, replies: list[Message], sizes: list[ReplySizes]
    ) -> dict[int, str]:
        """Time a phase on the simulated network; the straggler policy's verdicts.

        Clients compute in phase `train` only (QSFL's `upload` sends what was trained).
        """
        down = self.ledger.pending_down(phase)
        uploads = {
            self._partition(reply): Upload(
                self._samples(reply) if phase == "train" else 0,
                8 * reply_sizes.levels.transport_bytes,
                8 * reply_sizes.late_transport_bytes,
                reply_sizes.levels.requests,
            )
            for reply, reply_sizes in zip(replies, sizes, strict=True)
            if not reply.has_error() and self._partition(reply) in down
        }
        keep = self._keep if phase == "train" else len(down)
        return self.timer.time_phase(phase, down, uploads, keep)

    def _samples(self, reply: Message) -> int:
        """Training samples a client processed this round (0 for a nonsense example count)."""
        metrics = reply.content.metric_records.get(keys.METRICS, MetricRecord())
        examples = metrics.get(keys.NUM_EXAMPLES)
        if examples_problem(examples, self._partition_size(reply)):
            return 0
        c = self.config
        return samples_processed(int(examples), c.batch_size, c.local_epochs, c.local_steps)

    def aggregate_updates(
        self, server_round: int, accepted: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Combine the accepted replies (in partition order): the wrapped strategy's rule."""
        return self.aggregation.aggregate_train(server_round, accepted)

    def _check_train_reply(self, reply: Message, reply_sizes: ReplySizes) -> str:
        """`delivered` (or `partial`), or `failed` / `rejected` with a warning saying why."""
        node_id = reply.metadata.src_node_id
        if reply.has_error():
            log(WARNING, "node %s failed: %s", node_id, reply.error.reason)
            return "failed"
        problem = self.frame_problem(self.upload_phase, reply_sizes) or self.update_problem(reply)
        if problem:
            log(WARNING, "node %s: update left out (%s)", node_id, problem)
            return "rejected"
        return self.delivery_status(reply)

    def _reject_outliers(self, replies: list[Message], statuses: list[str]) -> None:
        """Reject the updates whose norm exceeds `outlier-norm-ratio` x the round's median.

        One client's huge (finite) values then cannot move the global model by more than the
        others' (`strategies.replies.outliers`: 3 or more well-formed updates).
        """
        norms = {
            index: self.update_norm(replies[index])
            for index, status in enumerate(statuses)
            if status in ACCEPTED
        }
        norms = {index: norm for index, norm in norms.items() if norm is not None}
        ratio = self.config.outlier_norm_ratio
        for index, multiple in outliers(norms, ratio).items():
            log(
                WARNING,
                "node %s sent an update of norm %.4g, %.3g x the round's median; "
                "left out (outlier-norm-ratio=%g)",
                replies[index].metadata.src_node_id,
                norms[index],
                multiple,
                ratio,
            )
            statuses[index] = "rejected"

    def update_norm(self, reply: Message) -> float | None:
        """L2 norm of a well-formed reply's update (its model minus the global model)."""
        arrays = reply.content[keys.ARRAYS]
        squares = sum(
            float(np.sum((arrays[name].numpy().astype(np.float64) - value) ** 2))
            for name, value in self._global.items()
        )
        return math.sqrt(squares)

    def delivery_status(self, reply: Message) -> str:
        """Status of a well-formed update: `delivered`, or `partial` when only part is used."""
        return "delivered"

    def update_problem(self, reply: Message) -> str:
        """What is wrong with a reply's content ("" when it is a usable dense update)."""
        content = reply.content
        if not has_update_records(content):
            return UPDATE_RECORDS
        problem = dense_model_problem(content, self.model_dtypes, self._global_shapes)
        return problem or self.check_metrics(reply, content[keys.METRICS], TRAIN_METRICS)

    def frame_problem(self, phase: str, reply_sizes: ReplySizes) -> str:
        """Why a compact reply's frame is unusable: malformed, or naming another codec."""
        codec = reply_sizes.frame_codec
        expected = self.request_entries(phase).get(keys.CODEC, "none")
        if reply_sizes.frame_problem or not codec or codec == expected:
            return reply_sizes.frame_problem
        return f"its frame names codec '{codec}'; this phase asked for '{expected}'"

    def request_entries(self, phase: str) -> dict:
        """The codec entries of the requests of `phase` (those of `train_config`)."""
        return self.codec_entries() if phase == "train" else {}

    def check_metrics(self, reply: Message, metrics: MetricRecord, expected: tuple) -> str:
        """`metrics_problem` for a reply, bounded by the size of its sender's partition."""
        return metrics_problem(metrics, expected, self._partition_size(reply))

    def _partition_size(self, reply: Message) -> int:
        """Training samples of the reply's sender (its largest believable example count)."""
        return self.partition_sizes[self._partition(reply)]

    # ------------------------------------------------------------------ evaluation
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Federated evaluation on a seeded subset (off when fraction-evaluate is 0)."""
        return self._broadcast(server_round, "evaluate", arrays, config)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Log every evaluation reply, then average the metrics of the good ones."""
        accepted = []
        for reply in self._sorted(replies):
            reply_sizes = self.ledger.arrived(reply)
            status = (
                "failed" if reply.has_error() else self._check_evaluate_reply(reply, reply_sizes)
            )
            self._log_reply(server_round, "evaluate", reply, status, reply_sizes)
            if status == "delivered":
                accepted.append(reply)
        self.ledger.flush_pending("evaluate")
        if not accepted:
            return None
        return self.aggregation.aggregate_evaluate(server_round, accepted)

    def _check_evaluate_reply(self, reply: Message, reply_sizes: ReplySizes) -> str:
        """`delivered`, or `rejected` (with a warning) when its metrics cannot be averaged."""
        metrics = reply.content.metric_records.get(keys.METRICS)
        problem = self.frame_problem("evaluate", reply_sizes)
        if not problem and (metrics is None or len(reply.content) != 1):
            problem = "expected one MetricRecord 'metrics'"
        problem = problem or self.check_metrics(reply, metrics, EVALUATE_METRICS)
        if problem:
            node_id = reply.metadata.src_node_id
            log(WARNING, "node %s sent malformed metrics (%s); left out", node_id, problem)
            return "rejected"
        return "delivered"

    # ------------------------------------------------------------------ rounds
    def finish_round(self, server_round: int, test_loss: float, test_accuracy: float) -> dict:
        """Append the round's row (called after central evaluation) and return it."""
        row = {
            "round": server_round,
            "selected": self._round.get("selected", 0),
            "delivered": self._round.get("delivered", 0),
            "train_loss": self._round.get("train_loss", ""),
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "sim_time_s": "" if self.clock is None else round(self.clock.now, 6),
            "wall_s": round(time.perf_counter() - self._round["t0"], 3),
        } | self.ledger.round_bytes()
        if self.clock is not None:
            self.recorder.log_rates(self.clock.rate_rows())
        self.recorder.log_round(row)
        return row

    def bandwidth_summary(self, model_bytes: int) -> dict:
        """Bytes per direction and level, and the train phase beside the formula."""
        clients = len(self.directory.node_of)
        return self.ledger.formula_summary(
            model_bytes, clients, self.config.fraction_train, self.config.num_server_rounds
        )

    # ------------------------------------------------------------------ checkpoints
    def run_state(self) -> dict:
        """What a resumed run needs of this strategy after a round (flower_app/checkpoint.py).

        Every attribute but the config, the log writers, the node directory (node ids change
        with every run) and what a round sets afresh, whatever a preset adds: the network
        clock and timer, STC's deltas, sync map and residual, QSFL's last signs; the ledger's
        run totals.
        """
        left_out = (*NOT_CHECKPOINTED, *ROUND_ONLY, *self.round_only)
        state = {k: v for k, v in vars(self).items() if k not in left_out}
        return state | {"ledger": (self.ledger.run, self.ledger.train)}

    def restore(self, state: dict) -> None:
        """Take back a `run_state` (after discovery, before the first resumed round)."""
        state = dict(state)
        run_totals, train_totals = state.pop("ledger")
        vars(self).update(state)
        self.ledger = Ledger(self.recorder.log_message, self.timer.sim_times)
        self.ledger.run, self.ledger.train = run_totals, train_totals

    def _start_round(self, server_round: int) -> None:
        self._round = {"round": server_round, "t0": time.perf_counter()}
        self._packed = {}
        self.ledger.start_round()

    # ------------------------------------------------------------------ helpers
    def _broadcast(
        self, server_round: int, phase: str, arrays: ArrayRecord, config: ConfigRecord
    ) -> list[Message]:
        """Send the model to this round's seeded selection for `phase`; log each message."""
        chosen, keep = self.selector.select(phase, server_round, list(self.directory.node_of))
        if phase == "train":
            self._keep = keep
        config[keys.SERVER_ROUND] = server_round
        messages = []
        for partition_id in chosen:
            content, fields = self.downlink(server_round, phase, partition_id, arrays, config)
            message = Message(
                self.on_the_wire(content),
                message_type=MESSAGE_TYPES[phase],
                dst_node_id=self.directory.node_of[partition_id],
            )
            self.ledger.sent(server_round, partition_id, phase, message, fields)
            messages.append(message)
        return messages

    def downlink(
        self,
        server_round: int,
        phase: str,
        partition_id: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
    ) -> tuple[RecordDict, dict]:
        """The content sent to one client and its log fields; here the dense global model."""
        if phase == "train":
            config = self.train_config(config)
        return RecordDict({keys.ARRAYS: arrays, keys.CONFIG: config}), dense_fields(arrays)

    def on_the_wire(self, content: RecordDict) -> RecordDict:
        """`content` as it travels: packed into one frame (protocol/wire.py) unless
        `wire.layout` is "flower"; the frame names the codec the config asks for."""
        if self.config.wire.layout == "flower":
            return content
        # the same records go to many clients (the dense model): packed once a round, as
        # Flower's layout shares one ArrayRecord (the cache holds them: their ids stay theirs)
        key = tuple(
            (name, id(record) if isinstance(record, ArrayRecord) else repr(dict(record)))
            for name, record in content.items()
        )
        if key not in self._packed:
            config = content.config_records.get(keys.CONFIG, ConfigRecord())
            self._packed[key] = (content, wire.pack(content, str(config.get(keys.CODEC, "none"))))
        return RecordDict(dict(self._packed[key][1]))

    def train_config(self, config: ConfigRecord) -> ConfigRecord:
        """A train message's config: the round's, plus the preset's `codec_entries`."""
        return ConfigRecord(dict(config) | self.codec_entries())

    def codec_entries(self) -> dict:
        """Config entries telling a client how to encode its update; none for FedAvg."""
        return {}

    def reply_fields(self, phase: str, reply: Message) -> dict:
        """Log fields (codec, payload_bits, dense_bytes) of a reply; here a dense model."""
        arrays = None if reply.has_error() else reply.content.array_records.get(keys.ARRAYS)
        return dense_fields(arrays) if phase == "train" and arrays is not None else {}

    def _log_reply(
        self, server_round: int, phase: str, reply: Message, status: str, reply_sizes: ReplySizes
    ) -> None:
        fields = self.reply_fields(phase, reply)
        self.ledger.replied(
            server_round, phase, self._partition(reply), reply, status, reply_sizes, fields
        )

    def _partition(self, reply: Message) -> int:
        return self.directory.partition(reply)

    def _sorted(self, replies: Iterable[Message]) -> list[Message]:
        return self.directory.in_order(replies)

    def summary(self) -> None:
        """Log the strategy's settings (Flower calls this at start)."""
        log(
            INFO,
            "\t├── %s over %s: %s clients, fraction-train %.2f, seed %s",
            type(self).__name__,
            type(self.aggregation).__name__,
            len(self.directory.node_of),
            self.config.fraction_train,
            self.config.seed,
        )
        self.aggregation.summary()

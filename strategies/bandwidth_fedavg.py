"""FedAvg that measures every message it sends and receives, and selects on partition ids.

The strategy learns `node_id -> partition_id` once with a query round (phase `query`,
round 0), then selects partitions with a seeded generator each round. Each message sent and
each reply received is one row in bandwidth.csv; each round is one row in rounds.csv.
Replies that failed or carry garbage are logged (`failed` / `rejected`) and left out.
A message's row waits for its reply, so that the sizes the client measured (payload-size mod)
land beside the server's in `client_bytes`. On a simulated network (`net.*`) each train round
is timed from the measured sizes once its replies are in; updates the straggler policy rules
out are logged `dropped` and left out.
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
from flwr.serverapp.strategy import FedAvg

from experiment.config import ExperimentConfig, selected_count
from experiment.recorder import Recorder
from experiment.task import partition_indices, samples_processed
from ledger.book import LEVELS, Ledger, Received
from netsim.rounds import Timeline, Transfer
from protocol import keys
from strategies.accounting import dense_fields
from strategies.discovery import (
    NODE_POLL_S,
    DiscoveryError,
    Report,
    coverage_problem,
    missing_partitions,
    setup_problem,
    wait_for_nodes,
)
from strategies.network import NetworkClock
from strategies.selection import EVALUATE_STREAM, TRAIN_STREAM, select_partitions

QUERY_TIMEOUT_S = 600.0
DISCOVERY_TIMEOUT_S = 120.0  # how long to wait for nodes of a deployment that join late
ACCEPTED = ("delivered", "partial")  # statuses whose update is aggregated
TRAIN_METRICS = (keys.TRAIN_LOSS, keys.NUM_EXAMPLES)  # what an update's MetricRecord holds
EVALUATE_METRICS = (keys.EVAL_LOSS, keys.EVAL_ACCURACY, keys.NUM_EXAMPLES)


def metrics_problem(metrics: MetricRecord, expected: tuple[str, ...], max_examples: int) -> str:
    """What is wrong with a reply's metrics ("" when Flower's averaging may take them).

    Exactly the `expected` keys, so that a foreign key never reaches Flower's metric
    aggregation (which raises on replies whose keys differ), all finite numbers, and an
    example count in 1 .. `max_examples` (the samples of the client's partition).
    """
    if set(metrics) != set(expected):
        return f"metric keys {sorted(metrics)} are not {sorted(expected)}"
    for key in expected:
        value = metrics[key]
        if not isinstance(value, int | float) or not math.isfinite(value):
            return f"{key}={value!r} is not a finite number"
    return examples_problem(metrics[keys.NUM_EXAMPLES], max_examples)


def examples_problem(examples: object, max_examples: int) -> str:
    """What is wrong with a reply's example count ("" when it is in 1 .. `max_examples`)."""
    if not isinstance(examples, int | float) or not 0 < examples <= max_examples:
        return (
            f"{keys.NUM_EXAMPLES}={examples!r} is not a count in 1..{max_examples} "
            "(the samples of its partition)"
        )
    return ""


class BandwidthFedAvg(FedAvg):
    """FedAvg with exact per-message byte logs and seeded, partition-keyed selection.

    Parameters
    ----------
    config : ExperimentConfig
        The validated run-config (fractions, seed, rounds).
    recorder : Recorder
        Where message and round rows go.
    """

    upload_phase = "train"  # the phase whose replies carry the updates

    def __init__(self, config: ExperimentConfig, recorder: Recorder) -> None:
        super().__init__(
            fraction_train=config.fraction_train,
            fraction_evaluate=config.fraction_evaluate,
            min_train_nodes=1,
            min_evaluate_nodes=1 if config.fraction_evaluate > 0 else 0,
            min_available_nodes=1,
            arrayrecord_key=keys.ARRAYS,
            configrecord_key=keys.CONFIG,
        )
        self.config = config
        self.recorder = recorder
        self.ledger = Ledger(recorder.log_message, self._sim_times)
        self.node_of: dict[int, int] = {}  # partition_id -> node_id
        self.partition_of: dict[int, int] = {}  # node_id -> partition_id
        self.partition_sizes: tuple[int, ...] = ()  # samples of each partition
        self._round: dict = {}
        self._global: dict[str, np.ndarray] = {}
        self._global_shapes: dict[str, tuple[int, ...]] = {}
        self.clock = NetworkClock(config.net, config.seed) if config.net.simulated else None
        self._keep = 0  # updates a round needs (fewer than selected under overcommit)
        self._timelines: dict[str, dict[int, Timeline]] = {}  # phase -> simulated times
        self._late_refinements: set[int] = set()  # clients whose refinement missed the deadline

    # ------------------------------------------------------------------ discovery
    def discover_partitions(self, grid: Grid) -> int:
        """Ask every node for its partition id (one small real message each way).

        Nodes that join later (a deployment) are waited for until every partition id in
        0 .. num-partitions - 1 has its node, at most `DISCOVERY_TIMEOUT_S`; a node without
        ids, a repeated id or a gap left at the deadline is a `DiscoveryError`.
        """
        self._start_round(0)
        deadline = time.monotonic() + DISCOVERY_TIMEOUT_S
        reports: dict[int, Report] = {}
        node_ids = wait_for_nodes(grid, DISCOVERY_TIMEOUT_S)
        while True:
            new = [node_id for node_id in node_ids if node_id not in reports]
            reports |= self._query_partitions(grid, new, reports)
            if reports and not missing_partitions(reports):
                break
            if time.monotonic() > deadline:
                raise DiscoveryError(coverage_problem(reports, DISCOVERY_TIMEOUT_S))
            time.sleep(NODE_POLL_S)
            node_ids = sorted(grid.get_node_ids())
        if self.clock is not None:
            self.clock.start(sorted(self.node_of))
        self.partition_sizes = tuple(map(len, partition_indices(self.config, len(self.node_of))))
        return len(self.node_of)

    def _query_partitions(
        self, grid: Grid, node_ids: list[int], known: dict[int, Report]
    ) -> dict[int, Report]:
        """Query `node_ids`, check their answers with those `known`, then map and log them."""
        if not node_ids:
            return {}
        messages = [
            Message(RecordDict(), message_type=MessageType.QUERY, dst_node_id=node_id)
            for node_id in node_ids
        ]
        replies = grid.send_and_receive(messages, timeout=QUERY_TIMEOUT_S)
        reports = {reply.metadata.src_node_id: self._partition_report(reply) for reply in replies}
        problem = setup_problem(known | reports)
        if problem:
            raise DiscoveryError(problem)
        for node_id, (partition_id, _) in reports.items():
            self.node_of[partition_id] = node_id
            self.partition_of[node_id] = partition_id
        sent = {message.metadata.dst_node_id: message for message in messages}
        for reply in self._sorted(replies):
            message = sent[reply.metadata.src_node_id]
            self.ledger.sent(0, self._partition(reply), "query", message, {})
            self._log_reply(0, "query", reply, "delivered", self.ledger.receive(reply))
        return reports

    @staticmethod
    def _partition_report(reply: Message) -> Report:
        """(partition-id, num-partitions) from a query reply; None when it has none."""
        if reply.has_error():
            raise DiscoveryError(
                f"node {reply.metadata.src_node_id} failed the partition-id query: "
                f"{reply.error.reason}"
            )
        metrics = reply.content.metric_records.get(keys.METRICS, MetricRecord())
        ids = metrics.get(keys.PARTITION_ID), metrics.get(keys.NUM_PARTITIONS)
        if not all(isinstance(value, int) for value in ids):
            return None
        return int(ids[0]), int(ids[1])

    # ------------------------------------------------------------------ training
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Select partitions (seeded) and send each the global model; log each message."""
        self._start_round(server_round)
        self._timelines = {}
        if self.clock is not None:
            self.clock.begin_round()
        self._global = {name: array.numpy() for name, array in arrays.items()}
        self._global_shapes = {name: value.shape for name, value in self._global.items()}
        messages = self._broadcast(server_round, "train", arrays, config)
        self._round["selected"] = len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Log every reply, leave out failed, late or malformed ones, FedAvg the rest."""
        accepted = []
        replies = self._sorted(replies)
        received = [self.ledger.receive(reply) for reply in replies]
        network_status = self._time_round(self.upload_phase, replies, received)
        statuses = [
            "dropped"
            if network_status.get(self._partition(reply)) == "dropped"
            else self._check_train_reply(reply)
            for reply in replies
        ]
        self._reject_outliers(replies, statuses)
        for reply, measured, status in zip(replies, received, statuses, strict=True):
            self._log_reply(server_round, self.upload_phase, reply, status, measured)
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

    def _time_round(
        self, phase: str, replies: list[Message], received: list[Received]
    ) -> dict[int, str]:
        """Simulated times of a phase's messages and the straggler policy's verdicts.

        Each message takes its transport bytes, plus one round-trip time per HTTP request
        (`net.rtt-ms`); clients compute in phase `train` only (QSFL's `upload` sends what
        was trained).
        """
        self._late_refinements = set()
        if self.clock is None:
            return {}
        down = self.ledger.pending_down(phase)
        uploads = {}  # partition -> (samples trained, bits up, of which refinement, requests)
        for reply, measured in zip(replies, received, strict=True):
            partition_id = self._partition(reply)
            if not reply.has_error() and partition_id in down:
                samples = self._samples(reply) if phase == "train" else 0
                levels = measured.levels
                uploads[partition_id] = (
                    samples,
                    8 * levels.transport_bytes,
                    8 * self.refinement_bytes(reply),
                    levels.requests,
                )
        transfers = [
            Transfer(
                partition_id,
                8 * levels.transport_bytes,
                *uploads.get(partition_id, (0, 0, 0, 0)),
                down_requests=levels.requests,
            )
            for partition_id, levels in down.items()
        ]
        keep = self._keep if phase == "train" else len(transfers)
        self._timelines[phase], status = self.clock.run_round(transfers, set(uploads), keep)
        self._late_refinements = {p for p, s in status.items() if s == "partial"}
        return status

    def _samples(self, reply: Message) -> int:
        """Training samples a client processed this round (0 for a nonsense example count)."""
        metrics = reply.content.metric_records.get(keys.METRICS, MetricRecord())
        examples = metrics.get(keys.NUM_EXAMPLES)
        if examples_problem(examples, self.partition_sizes[self._partition(reply)]):
            return 0
        c = self.config
        return samples_processed(int(examples), c.batch_size, c.local_epochs, c.local_steps)

    def refinement_bytes(self, reply: Message) -> int:
        """Bytes of a reply that may arrive late or never (sent last); here none."""
        return 0

    def aggregate_updates(
        self, server_round: int, accepted: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Combine the accepted replies (in partition order); here FedAvg's weighted mean."""
        return super().aggregate_train(server_round, accepted)

    def _check_train_reply(self, reply: Message) -> str:
        """`delivered` (or `partial`), or `failed` / `rejected` with a warning saying why."""
        node_id = reply.metadata.src_node_id
        if reply.has_error():
            log(WARNING, "node %s failed: %s", node_id, reply.error.reason)
            return "failed"
        problem = self._problem_in(reply)
        if problem:
            log(WARNING, "node %s sent a malformed update (%s); left out", node_id, problem)
            return "rejected"
        return self.delivery_status(reply)

    def _reject_outliers(self, replies: list[Message], statuses: list[str]) -> None:
        """Reject the updates whose norm exceeds `outlier-norm-ratio` x the round's median.

        Applies when the ratio is > 0 and at least 3 well-formed updates have a norm: one
        client's huge (finite) values then cannot move the global model by more than the
        others'. A median of 0 (nobody moved) leaves the rule out.
        """
        ratio = self.config.outlier_norm_ratio
        norms = {
            index: self.update_norm(replies[index])
            for index, status in enumerate(statuses)
            if status in ACCEPTED
        }
        norms = {index: norm for index, norm in norms.items() if norm is not None}
        if not ratio or len(norms) < 3:
            return
        median = float(np.median(list(norms.values())))
        for index, norm in norms.items():
            if median > 0 and norm > ratio * median:
                log(
                    WARNING,
                    "node %s sent an update of norm %.4g, %.3g x the round's median %.4g; "
                    "left out (outlier-norm-ratio=%g)",
                    replies[index].metadata.src_node_id,
                    norm,
                    norm / median,
                    median,
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

    def _problem_in(self, reply: Message) -> str:
        """What is wrong with a reply's content ("" when it is a usable dense update)."""
        content = reply.content
        arrays = content.array_records.get(keys.ARRAYS)
        metrics = content.metric_records.get(keys.METRICS)
        if arrays is None or metrics is None or len(content) != 2:
            return "expected one ArrayRecord 'arrays' and one MetricRecord 'metrics'"
        shapes = {name: tuple(array.shape) for name, array in arrays.items()}
        if shapes != self._global_shapes:
            return "array names or shapes differ from the global model"
        dtypes = {name: np.dtype(array.dtype) for name, array in arrays.items()}
        if dtypes != {name: value.dtype for name, value in self._global.items()}:
            return f"array dtypes {sorted(set(map(str, dtypes.values())))} differ from the model's"
        if not all(np.isfinite(array.numpy()).all() for array in arrays.values()):
            return "NaN or inf in the update"
        return self.metrics_problem(reply, metrics, TRAIN_METRICS)

    def metrics_problem(self, reply: Message, metrics: MetricRecord, expected: tuple) -> str:
        """`metrics_problem` for a reply, bounded by the size of its sender's partition."""
        return metrics_problem(metrics, expected, self.partition_sizes[self._partition(reply)])

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
            measured = self.ledger.receive(reply)
            status = "failed" if reply.has_error() else self._check_evaluate_reply(reply)
            self._log_reply(server_round, "evaluate", reply, status, measured)
            if status == "delivered":
                accepted.append(reply)
        self.ledger.flush_pending("evaluate")
        return super().aggregate_evaluate(server_round, accepted) if accepted else None

    def _check_evaluate_reply(self, reply: Message) -> str:
        """`delivered`, or `rejected` (with a warning) when its metrics cannot be averaged."""
        metrics = reply.content.metric_records.get(keys.METRICS)
        if metrics is None or len(reply.content) != 1:
            problem = "expected one MetricRecord 'metrics'"
        else:
            problem = self.metrics_problem(reply, metrics, EVALUATE_METRICS)
        if problem:
            node_id = reply.metadata.src_node_id
            log(WARNING, "node %s sent malformed metrics (%s); left out", node_id, problem)
            return "rejected"
        return "delivered"

    # ------------------------------------------------------------------ rounds
    def finish_round(self, server_round: int, test_loss: float, test_accuracy: float) -> dict:
        """Append the round's row (called after central evaluation) and return it."""
        round_sent = self.ledger.round.bytes_by_level("sent")
        run_sent = self.ledger.run.bytes_by_level("sent")
        row = {
            "round": server_round,
            "selected": self._round.get("selected", 0),
            "delivered": self._round.get("delivered", 0),
            "train_loss": self._round.get("train_loss", ""),
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "sim_time_s": "" if self.clock is None else round(self.clock.now, 6),
            "wall_s": round(time.perf_counter() - self._round["t0"], 3),
        }
        for level in ("transport", "content"):
            row[f"up_{level}_bytes"] = round_sent["up"][level]
            row[f"down_{level}_bytes"] = round_sent["down"][level]
            row[f"cum_{level}_bytes"] = run_sent["up"][level] + run_sent["down"][level]
        row["cum_up_transport_bytes"] = run_sent["up"]["transport"]
        row["cum_down_transport_bytes"] = run_sent["down"]["transport"]
        if self.clock is not None:
            self.recorder.log_rates(self.clock.rate_rows())
        self.recorder.log_round(row)
        return row

    def bandwidth_summary(self, model_bytes: int) -> dict:
        """Bytes per direction and level, and the train phase beside the formula.

        The formula (model down + update up) x N x fraction x rounds counts float32 payloads,
        so it is compared with the payload the train phase used; each level above adds what
        Flower wraps around it (`<level>_framing_bytes`).
        """
        clients, rounds = len(self.node_of), self.config.num_server_rounds
        formula = 2 * model_bytes * clients * self.config.fraction_train * rounds
        formula = int(formula) if float(formula).is_integer() else formula
        used = self.ledger.train.bytes_by_level("used")
        train = {level: used["up"][level] + used["down"][level] for level in LEVELS}
        summary = {
            "clients": clients,
            "fraction_train": self.config.fraction_train,
            "rounds": rounds,
            "model_bytes": model_bytes,
            "formula_bytes": formula,
            "train_messages": sum(self.ledger.train.messages.values()),
            "train_payload_bytes": train["payload"],
            "payload_minus_formula_bytes": train["payload"] - formula,
        }
        for level in LEVELS[1:]:
            summary[f"train_{level}_bytes"] = train[level]
            summary[f"{level}_framing_bytes"] = train[level] - train["payload"]
        summary["bytes"] = self.ledger.bytes_summary()
        return summary

    def _start_round(self, server_round: int) -> None:
        self._round = {"round": server_round, "t0": time.perf_counter()}
        self.ledger.start_round()

    # ------------------------------------------------------------------ helpers
    def _broadcast(
        self, server_round: int, phase: str, arrays: ArrayRecord, config: ConfigRecord
    ) -> list[Message]:
        """Send the model to this round's seeded selection for `phase`; log each message."""
        fraction, stream, message_type = {
            "train": (self.config.fraction_train, TRAIN_STREAM, MessageType.TRAIN),
            "evaluate": (self.config.fraction_evaluate, EVALUATE_STREAM, MessageType.EVALUATE),
        }[phase]
        count = selected_count(len(self.node_of), fraction)
        if count == 0:
            return []
        if phase == "train":
            self._keep = count
            if self.clock is not None:
                count = self.clock.selection_size(count, len(self.node_of))
        chosen = select_partitions(
            list(self.node_of), count, self.config.seed, server_round, stream
        )
        config[keys.SERVER_ROUND] = server_round
        messages = []
        for partition_id in chosen:
            content, fields = self.downlink(server_round, phase, partition_id, arrays, config)
            message = Message(
                content, message_type=message_type, dst_node_id=self.node_of[partition_id]
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
        self, server_round: int, phase: str, reply: Message, status: str, received: Received
    ) -> None:
        fields = self.reply_fields(phase, reply)
        self.ledger.replied(
            server_round, phase, self._partition(reply), reply, status, received, fields
        )

    def _sim_times(
        self, partition_id: int, phase: str, direction: str, status: str
    ) -> tuple[float | str, float | str]:
        """A train message's simulated start and end ("" without a network or a reply)."""
        timeline = self._timelines.get(phase, {}).get(partition_id)
        if timeline is None or (status in ("failed", "timeout") and direction == "up"):
            return "", ""
        if direction == "down":
            return round(timeline.down_start, 6), round(timeline.down_end, 6)
        return round(timeline.up_start, 6), round(timeline.up_end, 6)

    def _partition(self, reply: Message) -> int:
        return self.partition_of.get(reply.metadata.src_node_id, -1)

    def _sorted(self, replies: Iterable[Message]) -> list[Message]:
        """Replies in partition order: logs and float sums do not depend on arrival."""
        return sorted(replies, key=self._partition)

    def summary(self) -> None:
        """Log the strategy's settings (Flower calls this at start)."""
        log(
            INFO,
            "\t├── BandwidthFedAvg: %s clients, fraction-train %.2f, seed %s",
            len(self.node_of),
            self.config.fraction_train,
            self.config.seed,
        )
        super().summary()

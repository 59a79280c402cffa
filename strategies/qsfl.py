"""The `qsfl` preset: quality-based client selection and one-segment uploads (Yi et al., 2022).

Each round has two real Flower phases. Phase `train`: the seeded candidates receive the model
(and, for `qsfl.relevance = "update"`, the packed signs of the last global update), train, and
reply with three scalars only (loss, relevance, examples). The server scores each candidate,
score = (1 - beta) x relevance + beta x contribution, contribution = loss / the round's largest
loss, and asks the top int(candidates x upload-fraction) (at least one) to upload. Phase
`upload`: each of them sends segment (partition_id + round) mod S of its update, dense or top-p.
The server averages each segment over its senders (weighted by examples) and leaves a segment
nobody sent unchanged. On a simulated network each phase is timed on its own (the deadline
counts from the phase's start): a report that misses it leaves its client out of the ranking,
an upload that misses it leaves its segment out. Logs: selection.csv (every candidate's
scores), segments.csv (senders per segment and round).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from fedcodec.checks import DecodeError
from fedcodec.flat import unflatten
from fedcodec.segments import average_segments, segment_bounds, segment_id
from ledger.book import ReplySizes
from protocol import keys
from protocol.qsfl import CODEC, REPORT_METRICS, decode_segment, pack_signs
from protocol.quant import spec_config
from strategies.aggregation import streams_mean
from strategies.coded import CodedFedAvg, DecodedUpdate

SCALAR_BITS = 64  # a MetricRecord value (float or int) travels as 8 bytes
SELECTION_COLUMNS = (
    "round",
    "partition_id",
    "loss",
    "relevance",
    "contribution",
    "score",
    "segment",
    "selected",
)
SEGMENT_COLUMNS = ("round", "segment", "start", "stop", "senders")


@dataclass(frozen=True)
class Report:
    """What a candidate reported in phase 1."""

    partition_id: int
    loss: float
    relevance: float


def score_reports(reports: list[Report], beta: float) -> dict[int, tuple[float, float]]:
    """Per partition: (contribution, score), contribution = loss / the largest loss."""
    top = max((r.loss for r in reports), default=0.0)
    scored = {}
    for r in reports:
        contribution = r.loss / top if top > 0 else 0.0
        scored[r.partition_id] = (contribution, (1 - beta) * r.relevance + beta * contribution)
    return scored


def choose_uploaders(
    scores: dict[int, float], segment_of: dict[int, int], count: int, ensure_coverage: bool
) -> list[int]:
    """The `count` best-scoring partitions (ties: lower id first), sorted by id.

    With `ensure_coverage`, first the best candidate of each segment (best segments first),
    then the rest by score: every segment that has a candidate is covered when count allows.
    """
    ranked = sorted(scores, key=lambda p: (-scores[p], p))
    chosen: list[int] = []
    if ensure_coverage:
        covered: set[int] = set()
        for p in ranked:
            if len(chosen) < count and segment_of[p] not in covered:
                chosen.append(p)
                covered.add(segment_of[p])
    chosen += [p for p in ranked if p not in chosen][: count - len(chosen)]
    return sorted(chosen)


class QsflFedAvg(CodedFedAvg):
    """Two-phase rounds: scalar reports from the candidates, segments from the best."""

    upload_phase = "upload"
    round_only = (*CodedFedAvg.round_only, "_signs_record")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not streams_mean(self.aggregation):
            raise ValueError(
                f"QSFL stitches segments by their weighted mean; {type(self.aggregation).__name__} "
                "needs whole models"
            )
        self.settings = self.config.qsfl
        quantized = self.config.axes.uplink == "quant"
        self.spec = self.config.quant.spec.validate() if quantized else None
        self._signs: np.ndarray | None = None  # packed signs of the last global update
        self._signs_record: ArrayRecord | None = None  # the round's, as it travels
        self._segments: dict[int, int] = {}  # partition -> segment asked of it this round

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Phase 1 (train, report scalars) runs here; phase 2's upload requests are returned.

        Flower's round has one exchange (configure, send and receive, aggregate): phase 1 is
        a full exchange of its own before it, so that Flower's loop runs phase 2 as the round's
        exchange and `aggregate_train` receives the segments.
        """
        self._signs_record = (  # one record for every candidate (packed once: on_the_wire)
            None if self._signs is None else ArrayRecord({"signs": Array(self._signs)})
        )
        candidates = list(super().configure_train(server_round, arrays, config, grid))
        timeout = self.config.round_timeout_s
        replies = self._sorted(grid.send_and_receive(candidates, timeout=timeout))
        reports = self._read_reports(server_round, replies)
        return self._request_uploads(server_round, reports)

    # ---------------------------------------------------------------- phase 1
    def _read_reports(self, server_round: int, replies: list[Message]) -> list[Report]:
        """Log phase 1's replies; the reports of the candidates that may be ranked."""
        sizes = [self.ledger.arrived(reply) for reply in replies]
        network_status = self._time_round("train", replies, sizes)
        reports = []
        for reply, reply_sizes in zip(replies, sizes, strict=True):
            report, status = self._read_report(reply, reply_sizes)
            if status == "delivered" and network_status.get(self._partition(reply)) == "dropped":
                report, status = None, "dropped"
            self._log_reply(server_round, "train", reply, status, reply_sizes)
            if report is not None:
                reports.append(report)
        self.ledger.flush_pending("train")
        return reports

    def downlink(
        self,
        server_round: int,
        phase: str,
        partition_id: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
    ) -> tuple[RecordDict, dict]:
        """The dense model, the QSFL settings and (mode "update") the last update's signs."""
        content, fields = super().downlink(server_round, phase, partition_id, arrays, config)
        if (
            phase == "train"
            and self.settings.relevance == "update"
            and self._signs_record is not None
        ):
            content[keys.QSFL_SIGNS] = self._signs_record
            size = fields["dense_bytes"] // 4
            fields = fields | {"codec": "float32+signs", "payload_bits": 33 * size}
        return content, fields

    def codec_entries(self) -> dict:
        return {keys.CODEC: CODEC, keys.QSFL_RELEVANCE: self.settings.relevance}

    def request_entries(self, phase: str) -> dict:
        return self._upload_entries() if phase == "upload" else super().request_entries(phase)

    def _read_report(self, reply: Message, reply_sizes: ReplySizes) -> tuple[Report | None, str]:
        """A candidate's report and its status (`failed`, `rejected` or `delivered`)."""
        node_id = reply.metadata.src_node_id
        if reply.has_error():
            log(WARNING, "node %s failed: %s", node_id, reply.error.reason)
            return None, "failed"
        metrics = reply.content.metric_records.get(keys.METRICS)
        problem = self.frame_problem("train", reply_sizes)
        if not problem and (metrics is None or len(reply.content) != 1):
            problem = "expected one MetricRecord 'metrics'"
        problem = problem or self.check_metrics(reply, metrics, REPORT_METRICS)
        problem = problem or _scores_problem(metrics)
        if problem:
            log(WARNING, "node %s sent a malformed report (%s); left out", node_id, problem)
            return None, "rejected"
        report = Report(
            self._partition(reply), float(metrics[keys.TRAIN_LOSS]), float(metrics[keys.RELEVANCE])
        )
        return report, "delivered"

    def reply_fields(self, phase: str, reply: Message) -> dict:
        if phase != "train" or reply.has_error():
            return super().reply_fields(phase, reply)
        values = len(reply.content.metric_records.get(keys.METRICS, MetricRecord()))
        return {"codec": "scalars", "payload_bits": SCALAR_BITS * values, "dense_bytes": 0}

    # ---------------------------------------------------------------- phase 2
    def _request_uploads(self, server_round: int, reports: list[Report]) -> list[Message]:
        """Score the candidates, log the selection, ask the chosen for their segment."""
        s = self.settings
        segment_of = {
            r.partition_id: segment_id(r.partition_id, server_round, s.num_segments)
            for r in reports
        }
        scored = score_reports(reports, s.beta)
        count = max(1, int(len(reports) * s.upload_fraction)) if reports else 0
        chosen = choose_uploaders(
            {p: score for p, (_, score) in scored.items()}, segment_of, count, s.ensure_coverage
        )
        self.recorder.log_rows(
            "selection.csv",
            SELECTION_COLUMNS,
            [
                {
                    "round": server_round,
                    "partition_id": r.partition_id,
                    "loss": r.loss,
                    "relevance": r.relevance,
                    "contribution": scored[r.partition_id][0],
                    "score": scored[r.partition_id][1],
                    "segment": segment_of[r.partition_id],
                    "selected": int(r.partition_id in chosen),
                }
                for r in reports
            ],
        )
        self._segments = {p: segment_of[p] for p in chosen}
        messages = []
        for partition_id in chosen:
            request = ConfigRecord(
                self._upload_entries()
                | {
                    keys.SERVER_ROUND: server_round,
                    keys.QSFL_SEGMENT: segment_of[partition_id],
                }
            )
            content = self.on_the_wire(RecordDict({keys.CONFIG: request}))
            message = Message(
                content, message_type=keys.UPLOAD, dst_node_id=self.directory.node_of[partition_id]
            )
            self.ledger.sent(server_round, partition_id, "upload", message, {})
            messages.append(message)
        return messages

    def _upload_entries(self) -> dict:
        """How every chosen client encodes its segment (the request's config)."""
        entries = {
            keys.QSFL_NUM_SEGMENTS: self.settings.num_segments,
            keys.QSFL_TOP_P: self.settings.top_p,
            keys.QSFL_QUANTIZE: self.spec is not None,
            keys.SEED: self.config.seed,
        }
        if self.spec is not None:
            entries |= spec_config(self.spec, error_feedback=False) | {keys.CODEC: CODEC}
        return entries

    def decode_update(
        self, server_round: int, partition_id: int, arrays: dict[str, np.ndarray]
    ) -> DecodedUpdate:
        if partition_id not in self._segments:
            raise DecodeError("no segment was asked of this client")
        start, stop = self._bounds()[self._segments[partition_id]]
        values, bits = decode_segment(arrays, stop - start, self.spec)
        codec = self.spec.label if self.spec else "topk" if self.settings.top_p < 1 else "float32"
        return DecodedUpdate([values], bits, codec)

    def update_norm(self, reply: Message) -> float | None:
        """None: segments of different parts of the model have no common scale."""
        return None

    def combine(self, server_round: int, accepted: list[Message]) -> list[np.ndarray]:
        """Stitch the segments into one update; log each segment's senders."""
        sent = [
            (
                self._segments[self._partition(r)],
                self._decode(r).tensors[0],
                float(r.content[keys.METRICS][keys.NUM_EXAMPLES]),
            )
            for r in accepted
        ]
        update, senders = average_segments(self._flat_size, self.settings.num_segments, sent)
        self.recorder.log_rows(
            "segments.csv",
            SEGMENT_COLUMNS,
            [
                {"round": server_round, "segment": i, "start": a, "stop": b, "senders": n}
                for i, ((a, b), n) in enumerate(zip(self._bounds(), senders, strict=True))
            ],
        )
        covered = int((senders > 0).sum())
        log(INFO, "qsfl: %d of %d segments covered", covered, self.settings.num_segments)
        self._signs = pack_signs(update)
        return unflatten(update, list(self._global_shapes.values()))

    @property
    def _flat_size(self) -> int:
        """Entries of this round's global model, flattened."""
        return sum(value.size for value in self._global.values())

    def _bounds(self) -> list[tuple[int, int]]:
        return segment_bounds(self._flat_size, self.settings.num_segments)


def _scores_problem(metrics: MetricRecord) -> str:
    """What is wrong with a phase-1 report's finite loss and relevance ("" when usable)."""
    loss, relevance = metrics[keys.TRAIN_LOSS], metrics[keys.RELEVANCE]
    if loss < 0:
        return f"{keys.TRAIN_LOSS}={loss!r} is not a loss >= 0"
    if not 0 <= relevance <= 1:
        return f"{keys.RELEVANCE}={relevance!r} is not in [0, 1]"
    return ""

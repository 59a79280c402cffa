"""QSFL: segments, the id rule, ranking, per-segment averaging, coverage, the mod, the preset."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from experiment.config import parse
from experiment.recorder import Recorder
from fedcodec import topk
from fedcodec.quant import QuantSpec
from fedcodec.segments import average_segments, segment_bounds, segment_id
from mods.qsfl_mod import qsfl_mod, upload_segment
from protocol import keys
from protocol.qsfl import decode_segment, pack_signs
from protocol.quant import spec_config
from strategies.qsfl import QsflFedAvg, Report, choose_uploaders, score_reports
from tests.support import FakeGrid, model, read_rows, write_trace


# ---------------------------------------------------------------- pure parts
def test_segments_are_contiguous_near_equal_and_round_trip():
    # 10 entries in 3 segments: 10 = 4 + 3 + 3
    assert segment_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    flat = np.arange(10, dtype=np.float32)
    sent = [(i, flat[a:b], 1.0) for i, (a, b) in enumerate(segment_bounds(10, 3))]
    update, senders = average_segments(10, 3, sent)
    np.testing.assert_array_equal(update, flat)
    assert senders.tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="num_segments=11 is out of range; allowed: 1..10"):
        segment_bounds(10, 11)


def test_segment_id_rule():
    # (partition_id + round) mod S
    assert segment_id(7, 3, 6) == 4
    assert segment_id(0, 1, 6) == 1
    assert segment_id(5, 1, 6) == 0
    assert segment_id(3, 9, 1) == 0


def test_each_segment_is_averaged_over_its_senders_and_an_unsent_one_stays_zero():
    # Prepare: 6 entries in 3 segments; segment 0 from two clients (weights 1 and 3),
    # segment 2 from one, segment 1 from nobody
    sent = [
        (0, np.array([1.0, 1.0], np.float32), 1.0),
        (0, np.array([5.0, 5.0], np.float32), 3.0),
        (2, np.array([7.0, 8.0], np.float32), 2.0),
    ]
    # Execute
    update, senders = average_segments(6, 3, sent)
    # Assert: (1 x 1 + 3 x 5) / 4 = 4; no dilution by the clients that sent other segments
    assert update.tolist() == [4.0, 4.0, 0.0, 0.0, 7.0, 8.0]
    assert senders.tolist() == [2, 0, 1]


def test_scores_weigh_relevance_and_loss_contribution():
    reports = [Report(0, 2.0, 0.2), Report(1, 1.0, 0.9), Report(2, 0.5, 0.6)]
    # contribution = loss / 2.0 = 1, 0.5, 0.25; score = 0.1 x relevance + 0.9 x contribution
    scored = score_reports(reports, beta=0.9)
    assert scored[0] == pytest.approx((1.0, 0.92))
    assert scored[1] == pytest.approx((0.5, 0.54))
    assert scored[2] == pytest.approx((0.25, 0.285))
    # beta = 0: relevance alone
    assert {p: s for p, (_, s) in score_reports(reports, beta=0.0).items()} == {
        0: 0.2,
        1: 0.9,
        2: 0.6,
    }


def test_coverage_takes_the_best_client_of_each_segment_first():
    scores = {0: 0.9, 1: 0.8, 2: 0.7, 3: 0.6, 4: 0.6}
    segment_of = {0: 0, 1: 0, 2: 1, 3: 2, 4: 2}
    assert choose_uploaders(scores, segment_of, 3, ensure_coverage=False) == [0, 1, 2]
    assert choose_uploaders(scores, segment_of, 3, ensure_coverage=True) == [0, 2, 3]
    # fewer uploaders than segments: the best segments first
    assert choose_uploaders(scores, segment_of, 2, ensure_coverage=True) == [0, 2]
    # more uploaders than segments: the rest by score (ties: lower id)
    assert choose_uploaders(scores, segment_of, 4, ensure_coverage=True) == [0, 1, 2, 3]


def test_top_k_segment_exact_bits_by_hand():
    # 16 entries, p = 3/16 keeps positions 2, 5, 13: Rice b = 2 -> 10 position bits (see the
    # STC test) + 32 (count) + 3 x 32 (values) = 138 bits
    x = np.zeros(16, np.float32)
    x[[2, 5, 13]] = [4.0, -2.0, 6.0]
    x[[0, 7]] = [0.5, -1.0]
    encoded = topk.encode([x], p=3 / 16)
    assert encoded.payload_bits == 138
    # one `kept` array: the count, then the float32 bits of 4.0, -2.0, 6.0
    assert encoded.arrays["kept"].tolist() == [3, 0x40800000, 0xC0000000, 0x40C00000]
    (decoded,), bits = topk.decode_arrays(encoded.arrays, [(16,)])
    expected = np.zeros(16, np.float32)
    expected[[2, 5, 13]] = [4.0, -2.0, 6.0]
    np.testing.assert_array_equal(decoded, expected)
    assert bits == 138


# ---------------------------------------------------------------- the client side
def train_message(relevance: str, signs: np.ndarray | None) -> Message:
    config = ConfigRecord(
        {keys.SERVER_ROUND: 2, keys.CODEC: "qsfl", keys.QSFL_RELEVANCE: relevance}
    )
    content = RecordDict({keys.ARRAYS: model(1.0), keys.CONFIG: config})
    if signs is not None:
        content[keys.QSFL_SIGNS] = ArrayRecord({"signs": Array(signs)})
    return Message(content, message_type=MessageType.TRAIN, dst_node_id=1)


def trained_reply(msg: Message) -> Message:
    # the model is w (2, 3) and b (3,), all 1.0; training moves the 9 entries by:
    step = np.array([0.5, -0.5, 0.5, -0.5, 0.5, -0.5, -2.0, 0.5, 0.5], np.float32)
    trained = ArrayRecord({"w": Array(1.0 + step[:6].reshape(2, 3)), "b": Array(1.0 + step[6:])})
    metrics = MetricRecord({keys.TRAIN_LOSS: 0.75, keys.NUM_EXAMPLES: 40})
    return Message(RecordDict({keys.ARRAYS: trained, keys.METRICS: metrics}), reply_to=msg)


def context() -> Context:
    return Context(
        run_id=1, node_id=1, node_config={keys.PARTITION_ID: 3}, state=RecordDict(), run_config={}
    )


def test_phase_one_reports_scalars_and_keeps_the_update():
    # Prepare: the last global update was positive on the first 5 entries only
    last = np.array([1, 1, 1, 1, 1, -1, -1, -1, -1], np.float32)
    ctx = context()
    # Execute
    reply = qsfl_mod(train_message("update", pack_signs(last)), ctx, lambda m, c: trained_reply(m))
    # Assert: update signs + - + - + - - + +  vs  + + + + + - - - -: agree at 0, 2, 4, 5, 6
    assert set(reply.content.keys()) == {keys.METRICS}
    metrics = reply.content[keys.METRICS]
    assert metrics[keys.RELEVANCE] == pytest.approx(5 / 9)
    assert (metrics[keys.TRAIN_LOSS], metrics[keys.NUM_EXAMPLES]) == (0.75, 40)
    kept = ctx.state.array_records[keys.STATE_QSFL_UPDATE]["update"].numpy()
    assert kept.tolist() == [0.5, -0.5, 0.5, -0.5, 0.5, -0.5, -2.0, 0.5, 0.5]


def test_relevance_of_weights_compares_trained_and_received_signs():
    # received all +1; trained: 1 + step, negative only where step = -2 (entry 6): 8 / 9 agree
    reply = qsfl_mod(train_message("weights", None), context(), lambda m, c: trained_reply(m))
    assert reply.content[keys.METRICS][keys.RELEVANCE] == pytest.approx(8 / 9)


def upload_request(segment: int, num_segments: int, top_p: float, quant_bits: int = 0) -> Message:
    config = ConfigRecord(
        {
            keys.SERVER_ROUND: 2,
            keys.QSFL_SEGMENT: segment,
            keys.QSFL_NUM_SEGMENTS: num_segments,
            keys.QSFL_TOP_P: top_p,
            keys.QSFL_QUANTIZE: quant_bits > 0,
            keys.SEED: 1,
        }
    )
    if quant_bits:
        config = ConfigRecord(
            dict(config) | spec_config(QuantSpec("uniform", bits=quant_bits), error_feedback=False)
        )
    return Message(RecordDict({keys.CONFIG: config}), message_type=keys.UPLOAD, dst_node_id=1)


def test_phase_two_sends_the_requested_segment_dense_or_top_p():
    ctx = context()
    qsfl_mod(train_message("weights", None), ctx, lambda m, c: trained_reply(m))
    # 9 entries in 2 segments: (0, 5), (5, 9); segment 1 = -0.5, -2.0, 0.5, 0.5
    reply = upload_segment(upload_request(1, 2, 1.0), ctx)
    assert reply.content[keys.ARRAYS]["values"].numpy().tolist() == [-0.5, -2.0, 0.5, 0.5]
    assert reply.content[keys.METRICS][keys.NUM_EXAMPLES] == 40
    assert keys.STATE_QSFL_UPDATE not in ctx.state  # sent once, then dropped
    # top-p 0.25 of 4 entries keeps 1: the -2.0 at position 1
    ctx = context()
    qsfl_mod(train_message("weights", None), ctx, lambda m, c: trained_reply(m))
    arrays = upload_segment(upload_request(1, 2, 0.25), ctx).content[keys.ARRAYS]
    counts, values = topk.counts_and_values({"kept": arrays["kept"].numpy()}, 1)
    assert (counts.tolist(), values.tolist()) == ([1], [-2.0])


def test_a_quantized_segment_costs_its_codes_and_one_scale_pair():
    ctx = context()
    qsfl_mod(train_message("weights", None), ctx, lambda m, c: trained_reply(m))
    reply = upload_segment(upload_request(1, 2, 1.0, quant_bits=2), ctx)
    arrays = {name: a.numpy() for name, a in reply.content[keys.ARRAYS].items()}
    # segment 1 = -0.5, -2.0, 0.5, 0.5: 4 codes of 2 bits (one byte) + float32 low and step
    assert set(arrays) == {"codes", "lows", "steps"}
    assert arrays["codes"].nbytes == 1
    values, bits = decode_segment(arrays, 4, QuantSpec("uniform", bits=2))
    assert bits == 4 * 2 + 64
    # low -2, step 2.5 / 3: -0.5 -> code 2 (-2 + 5/3 = -0.333), 0.5 -> code 3 (0.5)
    assert values.tolist() == pytest.approx([-1 / 3, -2.0, 0.5, 0.5])


def test_an_upload_without_this_rounds_update_is_an_error():
    with pytest.raises(RuntimeError, match="no update of round 2 to upload"):
        upload_segment(upload_request(0, 2, 1.0), context())


# ---------------------------------------------------------------- the preset
class ReportingGrid(FakeGrid):
    """Answers the query like FakeGrid and train messages with hand-built reports."""

    def __init__(self, reports: dict[int, tuple]) -> None:
        """`reports`: partition -> (loss, relevance[, examples]); 10 examples by default."""
        super().__init__(len(reports))
        self.reports = reports

    def send_and_receive(self, messages, timeout=None):
        if messages and messages[0].metadata.message_type != MessageType.TRAIN:
            return super().send_and_receive(messages, timeout)
        replies = []
        for msg in messages:
            pid = self.partition_of_node[msg.metadata.dst_node_id]
            loss, relevance, examples = (*self.reports[pid], 10)[:3]
            metrics = MetricRecord(
                {keys.TRAIN_LOSS: loss, keys.NUM_EXAMPLES: examples, keys.RELEVANCE: relevance}
            )
            replies.append(Message(RecordDict({keys.METRICS: metrics}), reply_to=msg))
        return replies


def segment_reply(msg: Message, values: list[float], examples: int) -> Message:
    arrays = ArrayRecord({"values": Array(np.array(values, np.float32))})
    metrics = MetricRecord({keys.TRAIN_LOSS: 0.5, keys.NUM_EXAMPLES: examples})
    return Message(RecordDict({keys.ARRAYS: arrays, keys.METRICS: metrics}), reply_to=msg)


def test_the_preset_ranks_hand_built_reports_and_stitches_segments(flat_config, tmp_path):
    # Prepare: 4 candidates; model of 9 entries in 3 segments of 3; in round 1 client c asks
    # for segment (c + 1) % 3 -> 1, 2, 0, 1. Reports (loss, relevance), beta 0.5:
    # contribution = loss / 2: 0.5, 1, 0.25, 0.75 -> scores 0.45, 0.6, 0.5, 0.375 (+ 0.5 x rel)
    reports = {0: (1.0, 0.4), 1: (2.0, 0.2), 2: (0.5, 0.75), 3: (1.5, 0.0)}
    flat_config.update(
        {
            "strategy": "qsfl",
            "fraction-train": 1.0,
            "qsfl.beta": 0.5,
            "qsfl.upload-fraction": 0.5,
            "qsfl.num-segments": 3,
        }
    )
    recorder = Recorder(tmp_path / "run")
    strategy = QsflFedAvg(parse(flat_config), recorder)
    grid = ReportingGrid(reports)
    strategy.discover_partitions(grid)
    # Execute: int(4 x 0.5) = 2 upload: clients 1 (0.6) and 2 (0.5), segments 2 and 0
    requests = list(strategy.configure_train(1, model(), ConfigRecord(), grid))
    asked = {
        grid.partition_of_node[m.metadata.dst_node_id]: m.content[keys.CONFIG][keys.QSFL_SEGMENT]
        for m in requests
    }
    arrays, _ = strategy.aggregate_train(
        1,
        [
            segment_reply(requests[0], [1.0, 2.0, 3.0], 10),  # client 1, segment 2 (entries 6-8)
            segment_reply(requests[1], [4.0, 5.0, 6.0], 30),  # client 2, segment 0 (w's row 0)
        ],
    )
    strategy.finish_round(1, test_loss=1.0, test_accuracy=0.5)  # flushes every log
    # Assert
    assert asked == {1: 2, 2: 0}
    assert arrays["w"].numpy().tolist() == [[4.0, 5.0, 6.0], [0.0, 0.0, 0.0]]
    assert arrays["b"].numpy().tolist() == [1.0, 2.0, 3.0]
    selection = read_rows(recorder, "selection.csv")
    assert [(r["partition_id"], r["segment"], r["selected"]) for r in selection] == [
        ("0", "1", "0"),
        ("1", "2", "1"),
        ("2", "0", "1"),
        ("3", "1", "0"),
    ]
    assert float(selection[2]["score"]) == pytest.approx(0.5)
    segments = read_rows(recorder, "segments.csv")
    assert [r["senders"] for r in segments] == ["1", "0", "1"]
    rows = read_rows(recorder)
    up = [(r["phase"], r["codec"], r["payload_bits"]) for r in rows if r["direction"] == "up"]
    # 4 reports of 3 scalars (64 bits each), then 2 segments of 3 float32
    assert up[4:] == [("train", "scalars", "192")] * 4 + [("upload", "float32", "96")] * 2


def test_a_malformed_report_is_left_out_of_the_ranking(flat_config, tmp_path):
    # Prepare: a NaN loss, a relevance above 1, a NaN example count and one beyond any
    # partition of the 2,000 samples
    reports = {0: (1.0, 0.4), 1: (float("nan"), 0.2), 2: (0.5, 1.5), 3: (1.5, 0.0)}
    reports |= {4: (2.0, 0.2, float("nan")), 5: (2.0, 0.2, 10**6)}
    flat_config.update({"strategy": "qsfl", "fraction-train": 1.0, "qsfl.upload-fraction": 1.0})
    recorder = Recorder(tmp_path / "run")
    strategy = QsflFedAvg(parse(flat_config), recorder)
    grid = ReportingGrid(reports)
    strategy.discover_partitions(grid)
    # Execute
    requests = list(strategy.configure_train(1, model(), ConfigRecord(), grid))
    # Assert: only the well-formed reports are ranked (and all of them asked to upload)
    assert sorted(grid.partition_of_node[m.metadata.dst_node_id] for m in requests) == [0, 3]
    statuses = [
        r["status"] for r in read_rows(recorder) if (r["phase"], r["direction"]) == ("train", "up")
    ]
    assert statuses == ["delivered", "rejected", "rejected", "delivered", "rejected", "rejected"]


def test_on_a_network_each_phase_is_timed_and_a_late_report_is_dropped(flat_config, tmp_path):
    # Prepare: clients 0-2 on links so fast that only their 1 s of compute counts
    # (10 examples x 0.1 s); client 3's downlink of 100 bit/s takes minutes: its report
    # misses the 5 s deadline of phase 1, which therefore ends at 5.0 s
    trace = {c: [(0, 1e12, 1e12)] for c in range(3)} | {3: [(0, 1e12, 100)]}
    flat_config.update(
        {
            "strategy": "qsfl",
            "fraction-train": 1.0,
            "qsfl.upload-fraction": 0.5,
            "net.channel": "trace",
            "net.trace-file": write_trace(tmp_path / "trace.csv", trace),
            "net.policy": "drop",
            "net.deadline-s": 5.0,
            "net.seconds-per-sample": 0.1,
            "net.compute-sigma": 0.0,
        }
    )
    recorder = Recorder(tmp_path / "run")
    strategy = QsflFedAvg(parse(flat_config), recorder)
    grid = ReportingGrid({0: (1.0, 0.4), 1: (2.0, 0.2), 2: (0.5, 0.75), 3: (9.0, 0.9)})
    strategy.discover_partitions(grid)
    # Execute: 3 reports in time -> int(3 x 0.5) = 1 upload, client 1 (the highest loss)
    (request,) = strategy.configure_train(1, model(), ConfigRecord(), grid)
    strategy.aggregate_train(1, [segment_reply(request, [1.0, 2.0], 10)])  # 9 = 2+2+2+1+1+1
    row = strategy.finish_round(1, test_loss=1.0, test_accuracy=0.5)
    # Assert
    rows = read_rows(recorder)
    up = [r for r in rows if r["direction"] == "up"]
    reports = {r["partition_id"]: r for r in up if r["phase"] == "train"}
    assert {p: r["status"] for p, r in reports.items()} == {
        "0": "delivered",
        "1": "delivered",
        "2": "delivered",
        "3": "dropped",
    }
    assert float(reports["0"]["sim_end_s"]) == pytest.approx(1.0)
    assert [r["partition_id"] for r in read_rows(recorder, "selection.csv")] == ["0", "1", "2"]
    (upload,) = [r for r in up if r["phase"] == "upload"]
    assert upload["partition_id"] == "1" and upload["status"] == "delivered"
    assert float(upload["sim_start_s"]) == pytest.approx(5.0)  # phase 2 starts after phase 1
    assert row["sim_time_s"] == pytest.approx(5.0, abs=1e-6)  # + the fast uploads

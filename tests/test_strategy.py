"""BandwidthFedAvg on hand-built messages: exact bytes, statuses, selection, aggregation."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from experiment.config import parse
from experiment.recorder import Recorder
from experiment.task import client_data
from ledger.book import Ledger
from protocol import keys
from strategies.discovery import Directory
from tests.support import FakeGrid, make_strategy, model, read_rows, train_reply

# Hand-computed sizes. np.save writes a 128-byte header (magic, version, dict, padding)
# before the raw values, and ArrayRecord.count_bytes adds the key's length:
#   "w" (2, 3) float32: 128 + 24 + len("w") = 153;  "b" (3,) float32: 128 + 12 + 1 = 141
#   ConfigRecord {"server-round": int}: len("server-round") + 8 = 20
#   MetricRecord {"train-loss": float, "num-examples": int}: 10 + 8 + 12 + 8 = 38
MODEL_WIRE = 153 + 141
DOWN_WIRE = MODEL_WIRE + 20  # 314
UP_WIRE = MODEL_WIRE + 38  # 332
PAYLOAD_BITS = (6 + 3) * 32  # 288
DENSE_BYTES = (6 + 3) * 4  # 36


def test_discovery_maps_nodes_to_partitions_and_logs_the_query(flat_config, tmp_path):
    strategy, _, recorder = make_strategy(flat_config, tmp_path)
    assert strategy.directory.node_of == {0: 1000, 1: 1007, 2: 1014, 3: 1021}
    rows = read_rows(recorder)
    assert [(r["phase"], r["direction"], r["partition_id"]) for r in rows[:3]] == [
        ("query", "down", "0"),
        ("query", "up", "0"),
        ("query", "down", "1"),
    ]
    # empty request; reply MetricRecord {"partition-id": int, "num-partitions": int} = 12+8+14+8
    assert {r["content_bytes"] for r in rows if r["direction"] == "down"} == {"0"}
    assert {r["content_bytes"] for r in rows if r["direction"] == "up"} == {"42"}
    # down: the message and its empty record dict, one pull each, plus the pull of the
    # message header and the confirmation; up: the header, then the message, its record dict
    # and the metric record, one push each
    assert {r["requests"] for r in rows if r["direction"] == "down"} == {"4"}
    assert {r["requests"] for r in rows if r["direction"] == "up"} == {"4"}


def test_train_messages_are_measured_exactly(flat_config, tmp_path):
    strategy, grid, recorder = make_strategy(flat_config, tmp_path)
    messages = list(strategy.configure_train(1, model(), ConfigRecord(), grid))
    # different updates and losses: an object equal to one pushed earlier in the round
    # (tests/test_ledger.py) would not be pushed again
    replies = [train_reply(m, 1.0 + i, loss=0.5 + i) for i, m in enumerate(messages)]
    strategy.aggregate_train(1, replies)
    rows = [r for r in read_rows(recorder) if r["phase"] == "train"]
    assert len(rows) == 4  # 4 clients x fraction 0.5 = 2, each down and up
    for row in rows:
        expected = DOWN_WIRE if row["direction"] == "down" else UP_WIRE
        assert int(row["content_bytes"]) == expected
        # objects: message, record dict, array record, 2 arrays, 2 chunks, config (down) or
        # metric (up) record; down adds the header pull and the confirmation, up the header push
        assert int(row["requests"]) == (10 if row["direction"] == "down" else 9)
        assert int(row["payload_bits"]) == PAYLOAD_BITS
        assert int(row["dense_bytes"]) == DENSE_BYTES
        assert (row["codec"], row["status"]) == ("float32", "delivered")


def test_failed_and_garbage_replies_are_logged_and_left_out(flat_config, tmp_path):
    strategy, grid, recorder = make_strategy(flat_config, tmp_path, **{"fraction-train": 1.0})
    messages = list(strategy.configure_train(1, model(), ConfigRecord(), grid))
    nan_reply = train_reply(messages[2], float("nan"))
    wrong_shape = Message(
        RecordDict(
            {
                keys.ARRAYS: ArrayRecord({"w": Array(np.zeros(4, np.float32))}),
                keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 5}),
            }
        ),
        reply_to=messages[3],
    )
    replies = [
        train_reply(messages[0], 1.0, examples=10),
        Message(Error(code=0, reason="client crashed"), reply_to=messages[1]),
        nan_reply,
        wrong_shape,
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    statuses = [
        (r["partition_id"], r["status"])
        for r in read_rows(recorder)
        if r["phase"] == "train" and r["direction"] == "up"
    ]
    assert statuses == [("0", "delivered"), ("1", "failed"), ("2", "rejected"), ("3", "rejected")]
    np.testing.assert_array_equal(arrays["w"].numpy(), np.ones((2, 3), np.float32))


@pytest.mark.parametrize("examples", [float("nan"), float("inf"), 0, -3])
def test_an_example_count_that_is_no_finite_positive_count_is_rejected(
    flat_config, tmp_path, examples
):
    strategy, grid, recorder = make_strategy(flat_config, tmp_path, **{"fraction-train": 0.25})
    (message,) = strategy.configure_train(1, model(), ConfigRecord(), grid)
    reply = train_reply(message, 1.0)
    reply.content[keys.METRICS][keys.NUM_EXAMPLES] = examples
    arrays, _ = strategy.aggregate_train(1, [reply])
    assert arrays is None  # nothing usable: the global model is kept
    up = [r for r in read_rows(recorder) if r["phase"] == "train" and r["direction"] == "up"]
    assert [r["status"] for r in up] == ["rejected"]


def test_an_example_count_beyond_the_clients_partition_is_rejected(flat_config, tmp_path):
    # Prepare: the server's bound is the client's own data, partition by partition
    strategy, grid, recorder = make_strategy(flat_config, tmp_path, **{"fraction-train": 1.0})
    config = parse(flat_config)
    client_sizes = [len(client_data(config, pid, 4)) for pid in range(4)]
    assert list(strategy.partition_sizes) == client_sizes
    assert sum(client_sizes) == 2000  # the synthetic training set
    messages = list(strategy.configure_train(1, model(), ConfigRecord(), grid))
    # Execute: partition 0 claims one sample more than it holds, 1 exactly what it holds
    replies = [
        train_reply(messages[0], 1.0, examples=client_sizes[0] + 1),
        train_reply(messages[1], 3.0, examples=client_sizes[1]),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    # Assert
    up = [r for r in read_rows(recorder) if r["phase"] == "train" and r["direction"] == "up"]
    assert [r["status"] for r in up] == ["rejected", "delivered"]
    np.testing.assert_array_equal(arrays["w"].numpy(), np.full((2, 3), 3.0, np.float32))


def test_evaluation_metrics_that_cannot_be_averaged_are_rejected(flat_config, tmp_path):
    # Prepare: every client evaluates; one adds a key, one sends NaN, one fails
    strategy, grid, recorder = make_strategy(flat_config, tmp_path, **{"fraction-evaluate": 1.0})
    messages = list(strategy.configure_evaluate(1, model(), ConfigRecord(), grid))
    good = {keys.EVAL_LOSS: 0.5, keys.EVAL_ACCURACY: 0.75, keys.NUM_EXAMPLES: 10}
    contents = [good, good | {"injected": 1.0}, good | {keys.EVAL_LOSS: float("nan")}]
    replies = [
        Message(RecordDict({keys.METRICS: MetricRecord(metrics)}), reply_to=message)
        for metrics, message in zip(contents, messages, strict=False)
    ] + [Message(Error(code=0, reason="client crashed"), reply_to=messages[3])]
    # Execute
    metrics = strategy.aggregate_evaluate(1, replies)
    # Assert: the good reply alone is averaged; Flower's aggregation never saw the others
    up = [r for r in read_rows(recorder) if r["phase"] == "evaluate" and r["direction"] == "up"]
    assert [r["status"] for r in up] == ["delivered", "rejected", "rejected", "failed"]
    assert dict(metrics) == {keys.EVAL_LOSS: 0.5, keys.EVAL_ACCURACY: 0.75}


def test_foreign_metric_keys_other_dtypes_and_a_nan_loss_are_rejected(flat_config, tmp_path):
    # Prepare: 4 replies; 0 is good, 1 adds a metric key (Flower's averaging would raise
    # InconsistentMessageReplies), 2 sends float64 arrays, 3 a NaN loss
    strategy, grid, recorder = make_strategy(flat_config, tmp_path, **{"fraction-train": 1.0})
    messages = list(strategy.configure_train(1, model(), ConfigRecord(), grid))
    replies = [train_reply(message, 1.0) for message in messages]
    replies[1].content[keys.METRICS]["extra"] = 1.0
    replies[2].content[keys.ARRAYS] = ArrayRecord(
        {"w": Array(np.ones((2, 3))), "b": Array(np.ones(3))}  # float64
    )
    replies[3].content[keys.METRICS][keys.TRAIN_LOSS] = float("nan")
    # Execute
    arrays, metrics = strategy.aggregate_train(1, replies)
    # Assert: the good update alone is averaged, still float32; the others are rejected
    up = [r for r in read_rows(recorder) if r["phase"] == "train" and r["direction"] == "up"]
    assert [r["status"] for r in up] == ["delivered", "rejected", "rejected", "rejected"]
    assert arrays["w"].numpy().dtype == np.float32
    assert dict(metrics) == {keys.TRAIN_LOSS: 0.5}


def test_a_message_down_shares_the_fate_of_its_exchange(flat_config, tmp_path):
    # Prepare: 4 clients; 0 delivers, 1 raises, 2 sends NaN, 3 never answers
    strategy, grid, recorder = make_strategy(flat_config, tmp_path, **{"fraction-train": 1.0})
    messages = list(strategy.configure_train(1, model(), ConfigRecord(), grid))
    replies = [
        train_reply(messages[0], 1.0),
        Message(Error(code=0, reason="client crashed"), reply_to=messages[1]),
        train_reply(messages[2], float("nan")),
    ]
    # Execute
    strategy.aggregate_train(1, replies)
    # Assert: each pair (down, up) carries one status; no answer is a lone `timeout` row down
    rows = [r for r in read_rows(recorder) if r["phase"] == "train"]
    assert [(r["partition_id"], r["direction"], r["status"]) for r in rows] == [
        ("0", "down", "delivered"),
        ("0", "up", "delivered"),
        ("1", "down", "failed"),
        ("1", "up", "failed"),
        ("2", "down", "rejected"),
        ("2", "up", "rejected"),
        ("3", "down", "timeout"),
    ]
    # the train-phase totals hold the delivered exchange alone; rounds.csv every message sent
    summary = strategy.bandwidth_summary(model_bytes=DENSE_BYTES)
    assert summary["train_content_bytes"] == DOWN_WIRE + UP_WIRE == 646
    content = {d: summary["bytes"][d]["content"] for d in ("down", "up")}
    assert content["down"]["sent"] == 4 * DOWN_WIRE  # the query requests are empty: 0 B
    assert content["up"]["sent"] == 4 * 42 + 2 * UP_WIRE  # the 4 query replies, 0 and 2
    assert content["up"]["used"] == 4 * 42 + UP_WIRE  # the queries and partition 0's update


def test_fedavg_weights_by_examples_in_partition_order(flat_config, tmp_path):
    strategy, grid, _ = make_strategy(flat_config, tmp_path, **{"fraction-train": 1.0})
    messages = list(strategy.configure_train(1, model(), ConfigRecord(), grid))
    # values 0, 1, 2, 3 with 10, 30, 30, 30 examples: (0*10 + 30*(1+2+3)) / 100 = 1.8
    replies = [
        train_reply(m, float(i), examples=10 if i == 0 else 30) for i, m in enumerate(messages)
    ]
    arrays, metrics = strategy.aggregate_train(1, replies[::-1])
    np.testing.assert_allclose(arrays["b"].numpy(), np.full(3, 1.8, np.float32), rtol=1e-6)
    assert metrics[keys.TRAIN_LOSS] == pytest.approx(0.5)


def test_selection_is_seeded_and_independent_of_node_ids(flat_config, tmp_path):
    first, grid_a, _ = make_strategy(dict(flat_config), tmp_path, partitions=10, node_offset=5)
    second, grid_b, _ = make_strategy(dict(flat_config), tmp_path, partitions=10, node_offset=9)

    def chosen(strategy, grid, server_round):
        messages = strategy.configure_train(server_round, model(), ConfigRecord(), grid)
        return [grid.partition_of_node[m.metadata.dst_node_id] for m in messages]

    assert chosen(first, grid_a, 1) == chosen(second, grid_b, 1)
    assert len(chosen(first, grid_a, 2)) == 5
    rounds = {tuple(chosen(first, grid_a, r)) for r in range(1, 6)}
    assert len(rounds) > 1  # different rounds draw different clients


def test_summary_matches_the_formula_plus_framing(flat_config, tmp_path):
    strategy, grid, _ = make_strategy(flat_config, tmp_path)
    for server_round in (1, 2):
        messages = list(strategy.configure_train(server_round, model(), ConfigRecord(), grid))
        strategy.aggregate_train(server_round, [train_reply(m, 1.0) for m in messages])
    summary = strategy.bandwidth_summary(model_bytes=DENSE_BYTES)
    # (36 + 36) x 4 clients x 0.5 x 2 rounds = 288 B; 8 messages carry framing on top
    assert summary["formula_bytes"] == 288
    assert summary["train_payload_bytes"] == 288
    assert summary["train_content_bytes"] == 2 * 2 * (DOWN_WIRE + UP_WIRE) == 2584
    assert summary["content_framing_bytes"] == 2584 - 288
    assert summary["payload_minus_formula_bytes"] == 0


def test_round_row_sums_bytes_of_all_phases(flat_config, tmp_path):
    strategy, grid, recorder = make_strategy(flat_config, tmp_path)
    strategy.finish_round(0, 2.3, 0.1)
    messages = list(strategy.configure_train(1, model(), ConfigRecord(), grid))
    strategy.aggregate_train(1, [train_reply(m, 1.0) for m in messages])
    row = strategy.finish_round(1, 1.0, 0.5)
    assert (row["selected"], row["delivered"]) == (2, 2)
    assert (row["up_content_bytes"], row["down_content_bytes"]) == (2 * UP_WIRE, 2 * DOWN_WIRE)
    assert row["cum_content_bytes"] == 4 * 42 + 2 * (UP_WIRE + DOWN_WIRE)
    rows = read_rows(recorder)
    sent = {
        d: sum(int(r["transport_bytes"]) for r in rows if r["direction"] == d)
        for d in ["up", "down"]
    }
    assert row["cum_up_transport_bytes"] == sent["up"]
    assert row["cum_transport_bytes"] == sent["up"] + sent["down"]
    assert [r["round"] for r in read_rows(recorder, "rounds.csv")] == ["0", "1"]


def test_discovery_queries_nodes_as_they_register_until_every_partition_has_one(tmp_path):
    # Prepare: a simulation registers its nodes while the ServerApp starts: none, then the
    # node of partition 2, then all three
    class RegisteringGrid(FakeGrid):
        def __init__(self):
            super().__init__(3)
            self.answers = [[], [], [1014]]

        def get_node_ids(self):
            return self.answers.pop(0) if self.answers else list(self.partition_of_node)

    grid, directory = RegisteringGrid(), Directory()
    recorder = Recorder(tmp_path / "run")
    # Execute
    clients = directory.discover(grid, Ledger(recorder.log_message, lambda *args: ("", "")))
    # Assert: node 1014 was queried first, the two others once they came; one query each,
    # logged in partition order
    assert clients == 3
    assert directory.node_of == {0: 1000, 1: 1007, 2: 1014}
    recorder.log_round({})
    assert [row["partition_id"] for row in read_rows(recorder)] == ["0", "0", "1", "1", "2", "2"]


@pytest.mark.parametrize(("ratio", "status"), [(10.0, "rejected"), (0.0, "delivered")])
def test_an_update_far_beyond_the_rounds_others_is_rejected(flat_config, tmp_path, ratio, status):
    # Prepare: from the zero model, updates of 1.0, 1.1 and 0.9 in every entry (norm 3 x the
    # value: 9 entries) and one of 1e6 (a client sending huge finite values)
    strategy, grid, recorder = make_strategy(
        flat_config, tmp_path, **{"fraction-train": 1.0, "outlier-norm-ratio": ratio}
    )
    messages = list(strategy.configure_train(1, model(), ConfigRecord(), grid))
    values = [1.0, 1.1, 0.9, 1e6]
    pairs = enumerate(zip(messages, values, strict=True))
    replies = [train_reply(m, v, loss=0.1 * i) for i, (m, v) in pairs]
    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)
    # Assert: 3e6 is 1e6 / 1.05 x the median norm 3.15 (> 10 x): rejected, the mean of the others
    up = [r for r in read_rows(recorder) if r["phase"] == "train" and r["direction"] == "up"]
    assert [r["status"] for r in up] == ["delivered"] * 3 + [status]
    expected = 1.0 if status == "rejected" else (3.0 + 1e6) / 4
    np.testing.assert_allclose(arrays["w"].numpy(), expected, rtol=1e-6)


def test_the_outlier_rule_needs_three_updates(flat_config, tmp_path):
    # fraction 0.5 of 4: two updates, 1.0 and 1e6; no median to speak of, both are used
    strategy, grid, recorder = make_strategy(flat_config, tmp_path)
    messages = list(strategy.configure_train(1, model(), ConfigRecord(), grid))
    replies = [train_reply(m, v, loss=v) for m, v in zip(messages, [1.0, 1e6], strict=True)]
    strategy.aggregate_train(1, replies)
    up = [r for r in read_rows(recorder) if r["phase"] == "train" and r["direction"] == "up"]
    assert [r["status"] for r in up] == ["delivered", "delivered"]

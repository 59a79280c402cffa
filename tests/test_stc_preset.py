"""The stc preset without a simulation: the client mod (lambda as call_next) and the strategy."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, RecordDict

from experiment.config import parse
from experiment.recorder import Recorder
from fedcodec import stc
from ledger.levels import down_transport_bytes
from mods.stc_mod import stc_mod
from mods.wire_mod import wire_mod
from protocol import keys
from protocol.stc import model_fingerprint
from strategies import StcFedAvg
from tests.support import (
    SHAPES,
    FakeGrid,
    context,
    random_model,
    read_rows,
    record,
    train_message,
    trainer,
)


def stc_config(**extra) -> ConfigRecord:
    return ConfigRecord(
        {
            keys.SERVER_ROUND: 1,
            keys.CODEC: "stc",
            keys.STC_P_UP: 0.1,
            keys.STC_APPROX: 1.0,
            keys.STC_ACCUMULATE_UP: True,
            keys.SEED: 0,
        }
        | extra
    )


def test_mod_compresses_the_update_and_keeps_the_residual():
    ctx, seen, step = context(), [], random_model(1)
    start = random_model(0)
    msg = train_message(RecordDict({keys.ARRAYS: record(start), keys.CONFIG: stc_config()}))
    reply = stc_mod(msg, ctx, trainer(step, seen))
    arrays = {p: reply.content[keys.ARRAYS][p].numpy() for p in stc.ARRAY_NAMES}
    # 10% of 100 and of 5 entries: 10 and 1 kept
    assert stc.counts_and_means(arrays, 2)[0].tolist() == [10, 1]
    sent, _ = stc.decode_arrays(arrays, list(SHAPES.values()))
    residual = ctx.state[keys.STATE_RESIDUAL]
    for (name, value), decoded in zip(step.items(), sent, strict=True):
        np.testing.assert_allclose(decoded + residual[name].numpy(), value, atol=1e-5)
    np.testing.assert_array_equal(seen[0]["w"], start["w"])  # training starts from what came


def test_a_reply_says_which_model_it_trained_from():
    # the fingerprint: BLAKE2b with a 4-byte digest of the float32 values in order, here the
    # 12 bytes 00 00 80 3f | 00 00 00 c0 | 00 00 00 00 (1.0, -2.0, 0.0 little-endian)
    tensors = [np.array([1.0, -2.0], np.float32), np.zeros((1, 1), np.float32)]
    assert model_fingerprint(tensors) == 0xF9D3E8F2
    start = random_model(0)
    config = stc_config(**{keys.SERVER_ROUND: 4})
    msg = train_message(RecordDict({keys.ARRAYS: record(start), keys.CONFIG: config}))
    reply = stc_mod(msg, context(), trainer(random_model(1), []))
    # round 4's message brings round 3's model: 3 x 2**32 + its fingerprint
    assert reply.content[keys.METRICS][keys.MODEL] == 3 * 2**32 + model_fingerprint(start.values())


def test_mod_applies_catch_up_deltas_to_its_own_copy():
    ctx, seen = context(), []
    start = random_model(0)
    first = train_message(RecordDict({keys.ARRAYS: record(start), keys.CONFIG: stc_config()}))
    stc_mod(first, ctx, trainer(random_model(1), seen))
    deltas = {r: stc.encode(list(random_model(10 + r).values()), p=0.2) for r in (1, 2)}
    down = ArrayRecord(
        {f"{r}.{p}": Array(e.arrays[p]) for r, e in deltas.items() for p in stc.ARRAY_NAMES}
    )
    config = stc_config(**{keys.SERVER_ROUND: 3, keys.DOWN_ROUNDS: [1, 2]})
    stc_mod(
        train_message(RecordDict({keys.DOWN: down, keys.CONFIG: config})),
        ctx,
        trainer(random_model(1), seen),
    )
    expected = dict(start)
    for encoded in deltas.values():
        for name, value in zip(SHAPES, stc.decode(encoded, list(SHAPES.values())), strict=True):
            expected[name] = expected[name] + value
    for name in SHAPES:
        np.testing.assert_array_equal(seen[1][name], expected[name])


def test_mod_passes_other_messages_through():
    ctx, seen = context(), []
    content = RecordDict({keys.ARRAYS: record(random_model(0)), keys.CONFIG: ConfigRecord()})
    reply = stc_mod(train_message(content), ctx, trainer(random_model(1), seen))
    assert set(reply.content[keys.ARRAYS]) == {"w", "b"}


@pytest.mark.parametrize("layout", ["flower", "compact"])
def test_strategy_sends_catch_up_deltas_and_stays_in_sync_with_clients(
    flat_config, tmp_path, monkeypatch, layout
):
    # Prepare: 4 clients, 2 per round, STC both ways; a model of 25,005 weights (100 kB),
    # large enough for a catch-up to travel cheaper than the dense model (each of its arrays
    # costs two requests of about 1 kB); messages in either layout, through the wire mod
    monkeypatch.setitem(SHAPES, "w", (100, 250))
    flat_config.update(
        {"strategy": "stc", "stc.p-up": 0.1, "stc.p-down": 0.05, "wire.layout": layout}
    )
    strategy = StcFedAvg(parse(flat_config), Recorder(tmp_path / "run"))
    grid = FakeGrid(4)
    strategy.discover_partitions(grid)
    clients = {pid: context() for pid in range(4)}
    global_model = record(random_model(0))
    # Execute: 4 rounds, each client through the real mod
    for server_round in range(1, 5):
        messages = list(strategy.configure_train(server_round, global_model, ConfigRecord(), grid))
        replies = []
        for msg in messages:
            pid = grid.partition_of_node[msg.metadata.dst_node_id]
            seen = []
            step = trainer(random_model(100 + server_round), seen)
            reply = wire_mod(msg, clients[pid], lambda m, c, step=step: stc_mod(m, c, step))
            for name in SHAPES:  # the client trains from exactly the server's model
                np.testing.assert_array_equal(seen[0][name], global_model[name].numpy())
            replies.append(reply)
        global_model, _ = strategy.aggregate_train(server_round, replies)
    # Assert: a client's first model is dense; later ones are STC catch-ups whenever that
    # message travels cheaper than the dense one
    rows = [r for r in read_rows(strategy.recorder) if r["phase"] == "train"]
    down = [r for r in rows if r["direction"] == "down"]
    dense_wire = {int(r["transport_bytes"]) for r in down if r["codec"] == "float32"}
    assert len(dense_wire) == 1
    first_seen: set[str] = set()
    for row in down:
        if row["partition_id"] not in first_seen:
            assert row["codec"] == "float32"
        elif row["codec"] == "stc":
            assert int(row["transport_bytes"]) < min(dense_wire)
        first_seen.add(row["partition_id"])
    assert any(row["codec"] == "stc" for row in down)
    assert all(r["codec"] == "stc" for r in rows if r["direction"] == "up")
    assert all(int(r["content_bytes"]) * 8 >= int(r["payload_bits"]) for r in rows)
    # compact: an update is 4 requests up (2 when an earlier reply of the round pushed the
    # same records: both clients' first updates are equal), every catch-up 5 down however
    # many rounds it carries; Flower's layout: 9 up, 10 down for one round's 2 delta arrays
    # and 14 for two rounds'
    up_requests = {int(r["requests"]) for r in rows if r["direction"] == "up"}
    catch_up_requests = {int(r["requests"]) for r in down if r["codec"] == "stc"}
    expected = ({2, 4}, {5}) if layout == "compact" else ({2, 9}, {10, 14})
    assert (up_requests, catch_up_requests) == expected


@pytest.mark.parametrize(("missed", "expected"), [(1, "stc"), (10, "float32"), (400, "float32")])
def test_catch_up_or_dense_goes_by_the_bytes_that_travel(flat_config, tmp_path, missed, expected):
    # Prepare: the logistic model (7,850 float32: 31,400 B of values); client 0 synced at
    # round 0 and missed `missed` server deltas
    flat_config.update({"strategy": "stc", "stc.p-down": 0.002})
    strategy = StcFedAvg(parse(flat_config), Recorder(tmp_path / "run"))
    shapes = [(10, 784), (10,)]
    rng = np.random.default_rng(0)
    for server_round in range(1, missed + 1):
        update = [rng.normal(size=shape).astype(np.float32) for shape in shapes]
        strategy.deltas[server_round] = stc.encode(update, 0.002, rng=rng)
    strategy.synced[0] = 0
    arrays = ArrayRecord({"linear.weight": Array(np.zeros(shapes[0], np.float32))})
    arrays["linear.bias"] = Array(np.zeros(shapes[1], np.float32))
    # Execute
    content, fields = strategy.downlink(missed + 1, "train", 0, arrays, ConfigRecord())
    # Assert
    assert fields["codec"] == expected
    # On Flower's transport a delta is 2 arrays ("<r>.bits", "<r>.header"), each an Array
    # object and a chunk object pulled one request at a time: 4 pulls of at least
    # 816 + 21 (path) + 2 + 89 (request) + 127 + 1 (response head) = 1,056 B before any
    # content, 4,224 B a delta. The dense model is 8 objects (10 requests) around 31,400 B of
    # values, under 46,000 B: one delta wins, ten (>= 42,240 B, with their content and
    # message headers more than the dense model) lose, although their payload (about
    # 10 x 16 x 33 bits) would win by far (the old rule compared payload bits).
    dense = RecordDict({keys.ARRAYS: arrays, keys.CONFIG: ConfigRecord()})
    assert 31_400 < down_transport_bytes(dense) < 46_000
    payload_bits = sum(delta.payload_bits for delta in strategy.deltas.values())
    if expected == "float32":
        assert payload_bits < 8 * 31_400
        assert keys.ARRAYS in content
    else:
        assert content[keys.CONFIG][keys.DOWN_ROUNDS] == list(range(1, missed + 1))
        assert fields["payload_bits"] == payload_bits


# ---------------------------------------------------------------- resynchronisation
def play_stc_round(strategy, grid, clients, global_model, server_round, fate=None):
    """One round through the real mod; `fate[pid]`: "raise", "lost" (reply never arrives).

    A client that raises keeps the state it had before the message, as Flower discards the
    context of a failed ClientApp. Returns the new global model and what each client trained
    from.
    """
    fate = fate or {}
    messages = list(strategy.configure_train(server_round, global_model, ConfigRecord(), grid))
    replies, trained_from = [], {}
    for msg in messages:
        pid = grid.partition_of_node[msg.metadata.dst_node_id]
        kept = copy.deepcopy(clients[pid].state)
        seen = []
        try:
            if fate.get(pid) == "raise":
                raise RuntimeError("injected: the client crashed")
            reply = stc_mod(msg, clients[pid], trainer(random_model(100 + server_round), seen))
        except RuntimeError as error:
            clients[pid].state = kept
            reply = Message(Error(code=0, reason=str(error)), reply_to=msg)
        if seen:
            trained_from[pid] = seen[0]
        if fate.get(pid) != "lost":
            replies.append(reply)
    new_global, _ = strategy.aggregate_train(server_round, replies)
    return new_global, trained_from


@pytest.fixture
def stc_run(flat_config, tmp_path, monkeypatch):
    """4 clients, all every round, a model of 25,005 weights (a catch-up beats the dense one)."""
    monkeypatch.setitem(SHAPES, "w", (100, 250))
    flat_config.update(
        {"strategy": "stc", "fraction-train": 1.0, "stc.p-up": 0.1, "stc.p-down": 0.05}
    )
    strategy = StcFedAvg(parse(flat_config), Recorder(tmp_path / "run"))
    grid = FakeGrid(4)
    strategy.discover_partitions(grid)
    return strategy, grid, {pid: context() for pid in range(4)}


def assert_trained_from(trained_from: dict, global_model: ArrayRecord) -> None:
    for name in SHAPES:
        np.testing.assert_array_equal(trained_from[name], global_model[name].numpy())


@pytest.mark.parametrize("fate", ["raise", "lost"])
def test_a_client_that_failed_or_went_unheard_trains_next_from_the_servers_model(stc_run, fate):
    strategy, grid, clients = stc_run
    model = record(random_model(0))
    # Execute: client 0 raises in round 2 (or answers, but its reply never arrives)
    model, _ = play_stc_round(strategy, grid, clients, model, 1)
    model, _ = play_stc_round(strategy, grid, clients, model, 2, {0: fate})
    expected = model
    model, trained_from = play_stc_round(strategy, grid, clients, model, 3)
    # Assert: in round 3 it gets the deltas of rounds 1 and 2 (it answered round 1 only) and
    # trains from exactly the server's model: a client that raised kept round 0's copy and
    # applies both, one whose answer was lost holds round 1's and skips the first
    assert_trained_from(trained_from[0], expected)
    down = [
        r
        for r in read_rows(strategy.recorder)
        if (r["phase"], r["direction"], r["partition_id"]) == ("train", "down", "0")
    ]
    assert [r["codec"] for r in down] == ["float32", "stc", "stc"]
    assert [r["status"] for r in down] == [
        "delivered",
        "failed" if fate == "raise" else "timeout",
        "delivered",
    ]


def test_a_client_that_lost_its_copy_asks_for_and_gets_the_dense_model(stc_run):
    strategy, grid, clients = stc_run
    model = record(random_model(0))
    model, _ = play_stc_round(strategy, grid, clients, model, 1)
    # Execute: client 0's node restarts between rounds 1 and 2 (a fresh context)
    clients[0] = context()
    model, trained_from = play_stc_round(strategy, grid, clients, model, 2)
    assert 0 not in trained_from  # deltas but no copy: it asked for a resync
    expected = model
    model, trained_from = play_stc_round(strategy, grid, clients, model, 3)
    # Assert: round 2 failed with the reason logged; round 3's message is the dense model under
    # its own label, and the client trains from exactly the server's model
    assert_trained_from(trained_from[0], expected)
    rows = [
        r
        for r in read_rows(strategy.recorder)
        if (r["phase"], r["partition_id"]) == ("train", "0") and r["direction"] == "down"
    ]
    assert [(r["codec"], r["status"]) for r in rows] == [
        ("float32", "delivered"),
        ("stc", "failed"),
        ("float32-resync", "delivered"),
    ]


def test_a_client_whose_copy_differs_from_the_servers_is_left_out_and_resynced(stc_run):
    strategy, grid, clients = stc_run
    model = record(random_model(0))
    model, _ = play_stc_round(strategy, grid, clients, model, 1)
    # Execute: client 0's copy of the global model is corrupted (one weight off by 0.001)
    own = {n: a.numpy().copy() for n, a in clients[0].state[keys.STATE_GLOBAL].items()}
    own["w"][0, 0] += 1e-3
    clients[0].state[keys.STATE_GLOBAL] = record(own)
    model, trained_from = play_stc_round(strategy, grid, clients, model, 2)
    assert trained_from[0]["w"][0, 0] != trained_from[1]["w"][0, 0]  # it trained from its copy
    expected = model
    model, trained_from = play_stc_round(strategy, grid, clients, model, 3)
    # Assert: its round-2 update is rejected with the reason; round 3 sends it the dense model
    # under its own label, and it trains from exactly the server's model
    assert_trained_from(trained_from[0], expected)
    rows = [
        r for r in read_rows(strategy.recorder) if (r["phase"], r["partition_id"]) == ("train", "0")
    ]
    assert [(r["round"], r["direction"], r["codec"], r["status"]) for r in rows] == [
        ("1", "down", "float32", "delivered"),
        ("1", "up", "stc", "delivered"),
        ("2", "down", "stc", "rejected"),
        ("2", "up", "", "rejected"),
        ("3", "down", "float32-resync", "delivered"),
        ("3", "up", "stc", "delivered"),
    ]
    others = [r for r in read_rows(strategy.recorder) if r["partition_id"] != "0"]
    assert {r["status"] for r in others} == {"delivered"}


def test_a_partition_on_a_new_node_gets_the_dense_model_without_a_failed_round(stc_run):
    strategy, grid, clients = stc_run
    model = record(random_model(0))
    model, _ = play_stc_round(strategy, grid, clients, model, 1)
    old_node = strategy.directory.node_of[2]
    # Execute: partition 2's SuperNode restarts: a new node id, no state
    new_node = grid.restart(2)
    clients[2] = context()
    expected = model
    model, trained_from = play_stc_round(strategy, grid, clients, model, 2)
    # Assert: round 2 first asks the new node for its partition (logged), then sends it the
    # dense model under its own label; it trains from exactly the server's model
    assert strategy.directory.node_of[2] == new_node
    assert old_node not in strategy.directory.partition_of
    assert_trained_from(trained_from[2], expected)
    rows = [
        r for r in read_rows(strategy.recorder) if (r["round"], r["partition_id"]) == ("2", "2")
    ]
    assert [(r["phase"], r["direction"], r["codec"], r["status"]) for r in rows] == [
        ("query", "down", "", "delivered"),
        ("query", "up", "", "delivered"),
        ("train", "down", "float32-resync", "delivered"),
        ("train", "up", "stc", "delivered"),
    ]
    # a node with no partition of this run is asked once, logged, and left out
    grid.partition_of_node[5000] = 9
    assert strategy.directory.refresh(grid, strategy.ledger, 3, timeout_s=1.0) == []
    assert strategy.directory.refresh(grid, strategy.ledger, 3, timeout_s=1.0) == []
    assert 5000 in strategy.directory.strangers and len(strategy.directory.node_of) == 4

"""The simulated network inside the strategies, on hand-built messages with a trace channel.

The network times each message by its transport bytes (ledger.levels): the trace's rates are
set in units of a train request's bits (D) and a dense reply's bits (U), so that a client with
rate D receives the model in 1 s. Each client trains 10 examples for one epoch at 0.1 s a
sample: 1 s of compute.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
from flwr.app import Array, ConfigRecord

from experiment.config import ConfigError, parse
from fedcodec import quant
from fedcodec.quant import QuantSpec
from ledger.levels import pushed_objects_bytes
from netsim.rounds import Transfer
from protocol import keys
from strategies.network import NetworkClock
from tests.support import (
    SHAPES,
    make_strategy,
    message_bits,
    model,
    random_model,
    read_rows,
    run_round,
    trace_rates,
    train_reply,
    write_trace,
)


def network_strategy(flat_config, tmp_path, **net):
    overrides = {
        "fraction-train": 1.0,
        "net.channel": "trace",
        "net.trace-file": write_trace(tmp_path / "trace.csv"),
        "net.seconds-per-sample": 0.1,
        "net.compute-sigma": 0.0,
    }
    return make_strategy(flat_config, tmp_path, **overrides | net)


def play_round(strategy, grid, server_round):
    messages = list(strategy.configure_train(server_round, model(), ConfigRecord(), grid))
    pids = [grid.partition_of_node[m.metadata.dst_node_id] for m in messages]
    arrays, _ = strategy.aggregate_train(
        server_round,
        [
            train_reply(m, float(pid + 1), loss=float(pid))  # no two replies share an object
            for m, pid in zip(messages, pids, strict=True)
        ],
    )
    row = strategy.finish_round(server_round, 0.0, 0.0)
    return arrays, row


def train_rows(recorder, server_round=1):
    return [
        r for r in read_rows(recorder) if r["phase"] == "train" and r["round"] == str(server_round)
    ]


def test_drop_leaves_out_the_clients_late_for_the_deadline(flat_config, tmp_path):
    strategy, grid, recorder = network_strategy(
        flat_config, tmp_path, **{"net.policy": "drop", "net.deadline-s": 4.0}
    )
    # Execute
    arrays, row = play_round(strategy, grid, 1)
    # Assert: clients 0 and 1 (updates 1 and 2) arrive by 4.0; the mean of their models is 1.5
    np.testing.assert_allclose(arrays["w"].numpy(), 1.5)
    up = {int(r["partition_id"]): r for r in train_rows(recorder) if r["direction"] == "up"}
    assert {p: r["status"] for p, r in up.items()} == {
        0: "delivered",
        1: "delivered",
        2: "dropped",
        3: "dropped",
    }
    assert [float(up[p]["sim_end_s"]) for p in range(4)] == [3.0, 3.5, 5.0, 6.0]
    assert [float(up[p]["sim_start_s"]) for p in range(4)] == [2.0, 2.0, 3.0, 5.0]
    down = {int(r["partition_id"]): r for r in train_rows(recorder) if r["direction"] == "down"}
    assert [float(down[p]["sim_end_s"]) for p in range(4)] == [1.0, 1.0, 2.0, 4.0]
    assert (row["selected"], row["delivered"], row["sim_time_s"]) == (4, 2, 4.0)


@pytest.mark.parametrize("examples", [float("inf"), float("nan"), 10**9])
def test_a_nonsense_example_count_is_rejected_and_times_no_compute(flat_config, tmp_path, examples):
    # Prepare: client 1 claims an example count no partition holds
    strategy, grid, recorder = network_strategy(
        flat_config, tmp_path, **{"net.policy": "drop", "net.deadline-s": 4.0}
    )
    messages = list(strategy.configure_train(1, model(), ConfigRecord(), grid))
    replies = [train_reply(m, float(i + 1), loss=float(i)) for i, m in enumerate(messages)]
    replies[1].content[keys.METRICS][keys.NUM_EXAMPLES] = examples
    # Execute
    strategy.aggregate_train(1, replies)
    # Assert: rejected; its upload starts when its download ends (1 s: no compute counted)
    # and takes about 1 s at U (the count's encoding changes the reply by a few bytes)
    up = {int(r["partition_id"]): r for r in train_rows(recorder) if r["direction"] == "up"}
    assert up[1]["status"] == "rejected"
    assert float(up[1]["sim_start_s"]) == 1.0
    assert float(up[1]["sim_end_s"]) == pytest.approx(2.0, abs=1e-3)


def test_the_next_round_starts_where_the_last_one_ended(flat_config, tmp_path):
    strategy, grid, recorder = network_strategy(
        flat_config, tmp_path, **{"net.policy": "drop", "net.deadline-s": 4.0}
    )
    play_round(strategy, grid, 1)
    _, row = play_round(strategy, grid, 2)
    # from 4.0, every rate constant now: client 1 sends at 1328 bit/s -> 4 + 1 + 1 + 2 = 8
    up = {int(r["partition_id"]): r for r in train_rows(recorder, 2) if r["direction"] == "up"}
    assert [float(up[p]["sim_end_s"]) for p in range(4)] == [7.0, 8.0, 9.0, 10.0]
    assert row["sim_time_s"] == 8.0  # deadline 4 s after the round's start at 4.0
    rates = list(csv.DictReader((recorder.run_dir / "channels.csv").open()))
    client1_up = [
        (r["start_s"], r["end_s"], r["rate_bps"])
        for r in rates
        if r["partition_id"] == "1" and r["direction"] == "up"
    ]
    _, u, _, _ = message_bits()
    assert client1_up == [
        ("0.0", "2.5", str(u)),
        ("2.5", "4.0", str(u / 2)),
        ("4.0", "8.0", str(u / 2)),
    ]


def test_wait_ends_at_the_last_arrival(flat_config, tmp_path):
    strategy, grid, _ = network_strategy(flat_config, tmp_path, **{"net.policy": "wait"})
    arrays, row = play_round(strategy, grid, 1)
    np.testing.assert_allclose(arrays["w"].numpy(), 2.5)
    assert (row["delivered"], row["sim_time_s"]) == (4, 6.0)


def test_overcommit_selects_more_and_keeps_the_first_arrivals(flat_config, tmp_path):
    # fraction 0.5 of 4 -> K = 2; overcommit 1.5 -> 3 selected (seeded), the first 2 kept
    strategy, grid, recorder = network_strategy(
        flat_config,
        tmp_path,
        **{"fraction-train": 0.5, "net.policy": "overcommit", "net.overcommit": 1.5},
    )
    _, row = play_round(strategy, grid, 1)
    up = {int(r["partition_id"]): r for r in train_rows(recorder) if r["direction"] == "up"}
    assert len(up) == 3 and row["selected"] == 3 and row["delivered"] == 2
    arrivals = sorted(up, key=lambda p: float(up[p]["sim_end_s"]))
    assert [up[p]["status"] for p in arrivals] == ["delivered", "delivered", "dropped"]
    down = {int(r["partition_id"]): r for r in train_rows(recorder) if r["direction"] == "down"}
    assert {p: down[p]["status"] for p in up} == {p: up[p]["status"] for p in up}
    assert all(down[p]["sim_end_s"] != "" for p in up)  # a dropped model still took its time
    assert row["sim_time_s"] == float(up[arrivals[1]]["sim_end_s"])


def test_a_trace_without_some_client_fails_before_round_one(flat_config, tmp_path):
    flat_config.update(
        {
            "net.channel": "trace",
            "net.trace-file": write_trace(
                tmp_path / "short.csv", {c: rows for c, rows in trace_rates().items() if c < 2}
            ),
        }
    )
    with pytest.raises(ConfigError, match=r"no rows for client\(s\) 2, 3"):
        make_strategy(flat_config, tmp_path)


@pytest.mark.parametrize(
    ("policy", "deadline", "status"),
    [
        ("partial", "between", "partial"),
        ("drop", "between", "dropped"),
        ("partial", "after", "delivered"),
    ],
)
def test_a_late_refinement_leaves_the_base(quant_strategy, tmp_path, policy, deadline, status):  # noqa: F811
    # Prepare: one client a round (no other reply shares its objects), progressive 2 + 6 (the
    # "refine" array sent last); uplink 1,000 bit/s, a near-instant downlink, no compute.
    # A first round on an unhurried network gives the
    # reply's transport bytes T; the refinement is the push of its array and chunk, R bytes:
    # the base arrives at 8 (T - R) / 1000 s, the whole reply at 8 T / 1000 s.
    ramp = {
        n: np.linspace(0, 63, int(np.prod(s)), dtype=np.float32).reshape(s)
        for n, s in SHAPES.items()
    }
    spec = QuantSpec("progressive", base_bits=2, refine_bits=6)
    encoded = quant.encode(list(ramp.values()), spec)
    network = {
        "quant.scheme": "progressive",
        "net.channel": "trace",
        "net.trace-file": write_trace(
            tmp_path / "trace.csv", {c: [(0, 1000, 1e12)] for c in range(4)}
        ),
        "net.seconds-per-sample": 0.0,
        "fraction-train": 0.25,
    }
    probe, grid = quant_strategy(**network, **{"net.policy": "wait"})
    run_round(probe, grid, {}, random_model(0), dict.fromkeys(range(4), ramp))
    (whole,) = {
        int(r["transport_bytes"])
        for r in read_rows(probe.recorder)
        if r["direction"] == "up" and r["phase"] == "train"
    }
    refine = pushed_objects_bytes(Array(encoded.arrays["refine"]))
    base_end, up_end = 8 * (whole - refine) / 1000, 8 * whole / 1000
    seconds = (base_end + up_end) / 2 if deadline == "between" else up_end + 0.1
    strategy, grid = quant_strategy(**network, **{"net.policy": policy, "net.deadline-s": seconds})
    # Execute
    start = random_model(0)
    new_global = run_round(strategy, grid, {}, start, dict.fromkeys(range(4), ramp))
    # Assert
    up = [
        r for r in read_rows(strategy.recorder) if r["phase"] == "train" and r["direction"] == "up"
    ]
    assert [r["status"] for r in up] == [status]
    assert {int(r["transport_bytes"]) for r in up} == {whole}
    assert float(up[0]["sim_end_s"]) == pytest.approx(up_end, abs=1e-6)
    if status == "dropped":
        assert new_global is None
        return
    # the refinement is sent whether or not it is used: 105 entries x 6 bits
    assert {int(r["payload_bits"]) for r in up} == {105 * 8 + 128}
    assert {int(r["unused_payload_bits"]) for r in up} == {105 * 6 if status == "partial" else 0}
    sent = quant.drop_refinement(encoded.arrays, spec) if status == "partial" else encoded.arrays
    expected, bits = quant.decode_arrays(sent, list(SHAPES.values()), spec)
    assert bits == (105 * 2 if status == "partial" else 105 * 8) + 128
    np.testing.assert_allclose(new_global["w"] - start["w"], expected[0], atol=1e-5)


def test_rayleigh_links_are_seeded_per_client(flat_config):
    flat_config.update({"net.channel": "rayleigh", "net.policy": "wait"})
    net = parse(flat_config).net
    first, second = NetworkClock(net, seed=3), NetworkClock(net, seed=3)
    for clock in (first, second):
        clock.start([0, 1, 2])
        clock.run_round([Transfer(p, 8_000_000, 100, 8_000_000) for p in range(3)], {0, 1, 2}, 3)
    assert first.rate_rows() == second.rate_rows()
    assert first.now == second.now > 0
    up_rates = {
        r["partition_id"]: r["rate_bps"] for r in first.rate_rows() if r["direction"] == "up"
    }
    assert len(set(up_rates.values())) == 3  # each client fades on its own

"""netsim without Flower: hand-computed transmission times, round policies, seeded channels."""

from __future__ import annotations

import numpy as np
import pytest

from netsim.channel import Channel, mean_snr_at, random_walk, rayleigh
from netsim.network import Network, client_rng, speed_factor
from netsim.rounds import Links, Timeline, Transfer, apply_policy, client_timeline
from netsim.trace import TraceError, check_clients, load_trace


def test_constant_rate_takes_bits_over_rate():
    channel = Channel(np.array([0.0]), np.array([2e6]))
    assert channel.transmit_end(3.0, 5e6) == 5.5  # 3 s + 5 Mbit / 2 Mbit/s


def test_rate_change_during_a_transmission():
    # 1 Mbit/s on [0, 2), 4 Mbit/s on [2, 5), 0.5 Mbit/s from 5 on
    channel = Channel(np.array([0.0, 2.0, 5.0]), np.array([1e6, 4e6, 0.5e6]))
    # from 1.0: 1 Mbit by 2.0, the other 4 Mbit at 4 Mbit/s -> 3.0
    assert channel.transmit_end(1.0, 5e6) == 3.0
    # from 1.5: 0.5 Mbit by 2.0, 12 Mbit by 5.0, the last 0.5 Mbit at 0.5 Mbit/s -> 6.0
    assert channel.transmit_end(1.5, 13e6) == 6.0
    assert channel.rate_at(4.999) == 4e6
    assert channel.segments(1.0, 6.0) == [(1.0, 2.0, 1e6), (2.0, 5.0, 4e6), (5.0, 6.0, 0.5e6)]


def test_an_outage_pauses_the_transmission():
    channel = Channel(np.array([0.0, 1.0, 3.0]), np.array([1e6, 0.0, 1e6]))
    assert channel.transmit_end(0.0, 2e6) == 4.0  # 1 Mbit, 2 s of nothing, 1 Mbit
    assert channel.transmit_end(2.0, 0) == 2.0


def test_a_last_rate_of_zero_never_delivers():
    with pytest.raises(ValueError, match="never arrives"):
        Channel(np.array([0.0, 1.0]), np.array([1e6, 0.0])).transmit_end(0.0, 2e6)


def test_random_walk_follows_the_source_model():
    # Prepare: a constant change of +3 Mbit/s per 2 s step, clipped at 10 Mbit/s
    channel = random_walk(np.random.default_rng(5), 1e6, 10e6, 3e6, 3e6, step_s=2.0)
    start = np.random.default_rng(5).uniform(1e6, 10e6)
    # Assert: the rate of step k is min(start + 3k Mbit/s, 10 Mbit/s)
    for k in range(6):
        assert channel.rate_at(2.0 * k + 1.0) == pytest.approx(min(start + 3e6 * k, 10e6))


def test_random_walk_stays_within_its_bounds_over_many_blocks():
    channel = random_walk(np.random.default_rng(1), 1e6, 5e6, -2e6, 2e6, step_s=1.0)
    rates = [rate for _, _, rate in channel.segments(0.0, 2000.0)]  # 2000 steps: 8 blocks
    assert len(rates) == 2000
    assert min(rates) >= 1e6 and max(rates) <= 5e6
    assert min(rates) == 1e6 and max(rates) == 5e6  # it does hit both bounds


def test_rates_do_not_depend_on_how_far_ahead_a_run_looked():
    def make():
        return random_walk(client_rng(42, 3, 0), 1e6, 1e7, -1e6, 1e6, step_s=2.0)

    far_first, step_by_step = make(), make()
    far = far_first.rate_at(1500.0)
    near = [step_by_step.rate_at(t) for t in np.arange(0.0, 1501.0, 2.0)]
    assert near[-1] == far
    assert [far_first.rate_at(t) for t in np.arange(0.0, 1501.0, 2.0)] == near


def test_same_seed_same_rates_and_clients_differ():
    def rates(seed, client):
        channel = random_walk(client_rng(seed, client, 0), 1e6, 1e7, -1e6, 1e6, 2.0)
        return [rate for _, _, rate in channel.segments(0.0, 100.0)]

    assert rates(42, 1) == rates(42, 1)
    assert rates(42, 1) != rates(42, 2)
    assert rates(42, 1) != rates(43, 1)


def test_rayleigh_is_shannon_rate_of_exponential_power():
    channel = rayleigh(np.random.default_rng(9), 1e6, 100.0, step_s=0.5)
    gains = np.random.default_rng(9).exponential(1.0, 256)
    expected = 1e6 * np.log2(1.0 + 100.0 * gains)
    np.testing.assert_array_equal([channel.rate_at(0.5 * k) for k in range(256)], expected)


def test_path_loss_lowers_the_mean_snr():
    # 30 dB at 50 m, exponent 3: 500 m is one decade away -> 30 - 30 = 0 dB = 1.0
    assert mean_snr_at(500.0, 30.0, 50.0, 3.0) == pytest.approx(1.0)
    assert mean_snr_at(50.0, 30.0, 50.0, 3.0) == pytest.approx(1000.0)


def test_speed_factor_is_one_without_spread_and_seeded_with_it():
    assert speed_factor(42, 7, 0.0) == 1.0
    assert speed_factor(42, 7, 0.5) == speed_factor(42, 7, 0.5) != speed_factor(42, 8, 0.5)


def test_client_timeline_is_down_then_compute_then_base_then_refinement():
    # Prepare: downlink 4 Mbit/s, uplink 1 Mbit/s, 2 ms a sample
    links = Links(
        up=Channel(np.array([0.0]), np.array([1e6])),
        down=Channel(np.array([0.0]), np.array([4e6])),
        seconds_per_sample=0.002,
    )
    transfer = Transfer(3, down_bits=8_000_000, samples=1500, up_bits=10_000_000, refine_bits=2e6)
    # Execute
    timeline = client_timeline(links, 10.0, transfer)
    # Assert: down 2 s, compute 3 s, base 8 s, refinement 2 s
    assert timeline == Timeline(3, 10.0, 12.0, 15.0, 23.0, 25.0)


def test_each_request_of_a_message_waits_one_round_trip():
    # Prepare: the links above with a 50 ms round trip; 10 requests down, 9 up
    links = Links(
        up=Channel(np.array([0.0]), np.array([1e6])),
        down=Channel(np.array([0.0]), np.array([4e6])),
        seconds_per_sample=0.002,
        rtt_s=0.05,
    )
    transfer = Transfer(
        3, 8_000_000, 1500, 10_000_000, refine_bits=2e6, up_requests=9, down_requests=10
    )
    # Execute
    timeline = client_timeline(links, 10.0, transfer)
    # Assert: down 2 + 0.5 s, compute 3 s, 0.45 s of round trips, base 8 s, refinement 2 s
    assert timeline == Timeline(3, 10.0, 12.5, 15.5, 23.95, 25.95)


def timeline(client: int, up_end: float, base_end: float | None = None) -> Timeline:
    return Timeline(client, 0.0, 1.0, 2.0, up_end if base_end is None else base_end, up_end)


ARRIVALS = [timeline(3, 40.0), timeline(0, 10.0), timeline(2, 30.0, 22.0), timeline(1, 20.0)]


def test_wait_delivers_everyone_and_ends_at_the_last_arrival():
    status, end = apply_policy(ARRIVALS, "wait", 0.0, 25.0, keep=4)
    assert status == dict.fromkeys([0, 1, 2, 3], "delivered")
    assert end == 40.0


def test_drop_leaves_out_exactly_the_late_clients():
    status, end = apply_policy(ARRIVALS, "drop", 0.0, 25.0, keep=4)
    assert status == {0: "delivered", 1: "delivered", 2: "dropped", 3: "dropped"}
    assert end == 25.0  # someone was late: the server waited until the deadline


def test_drop_ends_at_the_last_arrival_when_nobody_is_late():
    status, end = apply_policy(ARRIVALS, "drop", 0.0, 45.0, keep=4)
    assert set(status.values()) == {"delivered"}
    assert end == 40.0


def test_partial_keeps_a_base_that_arrived_in_time():
    status, end = apply_policy(ARRIVALS, "partial", 0.0, 25.0, keep=4)
    assert status == {0: "delivered", 1: "delivered", 2: "partial", 3: "dropped"}
    assert end == 25.0


def test_overcommit_keeps_the_first_k_ties_to_the_lower_id():
    arrivals = [timeline(4, 10.0), *ARRIVALS]  # clients 0 and 4 both arrive at 10 s
    status, end = apply_policy(arrivals, "overcommit", 0.0, 25.0, keep=1)
    assert status == {0: "delivered", 4: "dropped", 1: "dropped", 2: "dropped", 3: "dropped"}
    assert end == 10.0
    status, end = apply_policy(arrivals, "overcommit", 0.0, 25.0, keep=3)
    assert [c for c, s in status.items() if s == "delivered"] == [0, 4, 1]
    assert end == 20.0


def test_a_round_without_arrivals():
    assert apply_policy([], "wait", 7.0, 25.0, keep=2) == ({}, 7.0)
    assert apply_policy([], "drop", 7.0, 25.0, keep=2) == ({}, 32.0)


def test_network_builds_each_client_once_and_logs_its_rates():
    made = []

    def make_links(client):
        made.append(client)
        constant = Channel(np.array([0.0, 4.0]), np.array([1e6, 2e6]))
        return Links(constant, constant, 0.0)

    network = Network(make_links)
    network.timeline(0.0, Transfer(1, 1_000_000, 0, 1_000_000))
    network.timeline(0.0, Transfer(1, 1_000_000, 0, 1_000_000))
    assert made == [1]
    rows = network.rate_rows(2.0, 6.0)
    assert [(r["direction"], r["start_s"], r["end_s"], r["rate_bps"]) for r in rows] == [
        ("down", 2.0, 4.0, 1e6),
        ("down", 4.0, 6.0, 2e6),
        ("up", 2.0, 4.0, 1e6),
        ("up", 4.0, 6.0, 2e6),
    ]


TRACE = "client,time_s,up_bps,down_bps\n0,0,1000,4000\n0,10,500,4000\n1,0,2000,8000\n"


def test_trace_gives_each_client_its_rates(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text(TRACE)
    channels = load_trace(path)
    assert sorted(channels) == [0, 1]
    # client 0 sends 15 kbit from 5 s: 5 kbit by 10 s, then 10 kbit at 500 bit/s -> 30 s
    assert channels[0]["up"].transmit_end(5.0, 15_000) == 30.0
    assert channels[1]["down"].rate_at(1e6) == 8000.0
    check_clients(channels, [0, 1], str(path))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "does not exist"),
        ("", "is not a CSV table"),
        ("client,time_s,up_bps\n0,0,1\n", "missing: down_bps"),
        ("client,time_s,up_bps,down_bps\n0,0,fast,1\n", "data row 1: up_bps='fast'"),
        ("client,time_s,up_bps,down_bps\n0,0,1,1\n0,5,-3,1\n", "data row 2: up_bps='-3'"),
        ("client,time_s,up_bps,down_bps\n0.5,0,1,1\n", "client='0.5'"),
        ("client,time_s,up_bps,down_bps\n0,2,1,1\n", "client 0: time_s must start at 0"),
        ("client,time_s,up_bps,down_bps\n0,0,1,1\n0,0,1,1\n", "increase strictly"),
        ("client,time_s,up_bps,down_bps\n0,0,1,1\n0,3,0,1\n", "the last up_bps is 0"),
    ],
)
def test_a_bad_trace_names_the_problem(tmp_path, text, message):
    path = tmp_path / "trace.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(TraceError, match=message):
        load_trace(path)


def test_a_trace_must_cover_every_client(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text(TRACE)
    with pytest.raises(TraceError, match=r"no rows for client\(s\) 2, 5; it covers 0, 1"):
        check_clients(load_trace(path), [0, 1, 2, 5], str(path))

"""The simulated network of a run, adapted from `netsim` to the `net.*` run-config.

`NetworkClock` holds the simulated time; `RoundTimer` times a strategy's phases on it. Each
train round (or each phase of one: QSFL has two) it takes the sizes actually sent (down and
up, in bytes as measured) and the samples each client trained on, times every client's
messages, applies the straggler policy (the deadline counts from the phase's start) and moves
the clock to the phase's end.
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass
from functools import partial

from experiment.config import ConfigError, NetConfig
from ledger.levels import Levels
from netsim.channel import Channel, mean_snr_at, random_walk, rayleigh
from netsim.network import (
    DOWN_STREAM,
    PLACEMENT_STREAM,
    UP_STREAM,
    Network,
    client_rng,
    speed_factor,
)
from netsim.rounds import Links, Timeline, Transfer, apply_policy
from netsim.trace import TraceError, check_clients, load_trace


def load_trace_channels(net: NetConfig) -> dict[int, dict[str, Channel]] | None:
    """The trace's channels when `net.channel` is "trace" (a bad file is a ConfigError)."""
    if net.channel != "trace":
        return None
    try:
        return load_trace(net.trace_file)
    except TraceError as error:
        raise ConfigError(f"net.trace-file: {error}") from None


def make_links(
    net: NetConfig, seed: int, trace: dict[int, dict[str, Channel]] | None, partition_id: int
) -> Links:
    """One client's links and device speed, from its own seeded streams (or the trace)."""
    seconds = net.seconds_per_sample * speed_factor(seed, partition_id, net.compute_sigma)
    rtt_s = net.rtt_ms / 1000
    if trace is not None:
        return Links(trace[partition_id]["up"], trace[partition_id]["down"], seconds, rtt_s)
    up_rng = client_rng(seed, partition_id, UP_STREAM)
    down_rng = client_rng(seed, partition_id, DOWN_STREAM)
    if net.channel == "random-walk":
        bounds = (net.min_bps, net.max_bps, net.change_low_bps, net.change_high_bps)
        up = random_walk(up_rng, *bounds, net.step_s)
        down = random_walk(down_rng, *(net.down_factor * b for b in bounds), net.step_s)
        return Links(up, down, seconds, rtt_s)
    distance = client_rng(seed, partition_id, PLACEMENT_STREAM).uniform(
        net.distance_min_m, net.distance_max_m
    )
    snr = mean_snr_at(distance, net.snr_db, net.distance_min_m, net.path_loss_exponent)
    up = rayleigh(up_rng, net.bandwidth_hz, snr, net.step_s)
    down = rayleigh(down_rng, net.down_factor * net.bandwidth_hz, snr, net.step_s)
    return Links(up, down, seconds, rtt_s)


class NetworkClock:
    """Simulated time of a run and the timing of its train rounds."""

    def __init__(self, net: NetConfig, seed: int) -> None:
        self.net = net
        self._trace = load_trace_channels(net)
        self.network = Network(partial(make_links, net, seed, self._trace))
        self.now = 0.0
        self.round_start = 0.0

    def start(self, partition_ids: list[int]) -> None:
        """Build every client's links (a trace must cover them all) before round 1."""
        if self._trace is not None:
            try:
                check_clients(self._trace, partition_ids, self.net.trace_file)
            except TraceError as error:
                raise ConfigError(f"net.trace-file: {error}") from None
        for partition_id in partition_ids:
            self.network.links(partition_id)

    def selection_size(self, count: int, available: int) -> int:
        """Clients to select for `count` updates: more under `overcommit`."""
        if self.net.policy != "overcommit":
            return count
        return min(available, math.ceil(count * self.net.overcommit - 1e-9))

    def begin_round(self) -> None:
        """Mark the start of a round (the rates logged for it begin here)."""
        self.round_start = self.now

    def run_round(
        self, transfers: list[Transfer], answered: set[int], keep: int
    ) -> tuple[dict[int, Timeline], dict[int, str]]:
        """Time a round's (or phase's) transfers; `answered`: the clients whose reply came.

        Returns every client's timeline and the policy's status of each answering client,
        and moves the clock to the end.
        """
        start = self.now
        timelines = {t.partition_id: self.network.timeline(start, t) for t in transfers}
        status, self.now = apply_policy(
            [timelines[p] for p in sorted(answered)],
            self.net.policy,
            start,
            self.net.deadline_s,
            keep,
        )
        return timelines, status

    def rate_rows(self) -> list[dict]:
        """Every client's rates over the last round, for channels.csv."""
        return self.network.rate_rows(self.round_start, self.now)


def check_network(net: NetConfig, seed: int, num_clients: int) -> None:
    """Build every client's links once, so a bad trace fails before Flower starts."""
    if net.simulated:
        NetworkClock(net, seed).start(list(range(num_clients)))


@dataclass(frozen=True)
class Upload:
    """What a reply brings to the timing of its phase."""

    samples: int  # training samples the client processed (0 outside phase train)
    bits: int  # transport bits of the reply
    refinement_bits: int  # of which may come late (a progressive refinement, sent last)
    requests: int  # HTTP requests of the reply


class RoundTimer:
    """Simulated times of each phase's messages and the straggler policy's verdicts.

    Without a simulated network (`clock` None) nothing is timed and every verdict is empty.
    """

    def __init__(self, clock: NetworkClock | None) -> None:
        self.clock = clock
        self._timelines: dict[str, dict[int, Timeline]] = {}  # phase -> partition -> times
        self.late_refinements: set[int] = set()  # clients whose refinement missed the deadline

    def begin_round(self) -> None:
        """Forget the last round's times; the rates logged for this round begin now."""
        self._timelines = {}
        if self.clock is not None:
            self.clock.begin_round()

    def time_phase(
        self, phase: str, down: dict[int, Levels], uploads: dict[int, Upload], keep: int
    ) -> dict[int, str]:
        """Time a phase: each message by its transport bytes, plus one round-trip per request.

        `down`: the levels of every message sent in the phase; `uploads`: the replies that
        came. Returns the policy's status (`delivered`, `partial` or `dropped`) per uploader.
        """
        self.late_refinements = set()
        if self.clock is None:
            return {}
        transfers = [
            Transfer(
                partition_id,
                8 * levels.transport_bytes,
                *astuple(uploads.get(partition_id, Upload(0, 0, 0, 0))),
                down_requests=levels.requests,
            )
            for partition_id, levels in down.items()
        ]
        self._timelines[phase], status = self.clock.run_round(transfers, set(uploads), keep)
        self.late_refinements = {p for p, s in status.items() if s == "partial"}
        return status

    def sim_times(
        self, partition_id: int, phase: str, direction: str, status: str
    ) -> tuple[float | str, float | str]:
        """A message's simulated start and end ("" without a network or a reply)."""
        timeline = self._timelines.get(phase, {}).get(partition_id)
        if timeline is None or (status in ("failed", "timeout") and direction == "up"):
            return "", ""
        if direction == "down":
            return round(timeline.down_start, 6), round(timeline.down_end, 6)
        return round(timeline.up_start, 6), round(timeline.up_end, 6)

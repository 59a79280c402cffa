"""One round on the simulated clock: each client's timeline, then the straggler policy.

Per client, downlink, local compute and uplink run one after the other; all downlinks start
when the round starts. An uplink may end with a refinement (the progressive quantizer's second
array), sent after the base: `base_end` is when everything but the refinement has arrived.
"""

from __future__ import annotations

from dataclasses import dataclass

from netsim.channel import Channel

POLICIES = ("wait", "drop", "partial", "overcommit")


@dataclass(frozen=True)
class Links:
    """One client's two channels and its device speed."""

    up: Channel
    down: Channel
    seconds_per_sample: float
    rtt_s: float = 0.0  # one round trip per request: a message is several requests


@dataclass(frozen=True)
class Transfer:
    """What one client moves in a round, in the sizes actually sent."""

    partition_id: int
    down_bits: int
    samples: int  # training samples processed (compute time)
    up_bits: int
    refine_bits: int = 0  # the last part of up_bits, usable late or never
    up_requests: int = 0  # requests each message takes, one round trip each
    down_requests: int = 0


@dataclass(frozen=True)
class Timeline:
    """When one client's messages start and end (seconds on the simulated clock)."""

    partition_id: int
    down_start: float
    down_end: float
    up_start: float
    base_end: float
    up_end: float


def client_timeline(links: Links, start_s: float, transfer: Transfer) -> Timeline:
    """Downlink from `start_s`, then compute, then the uplink base and its refinement.

    Each message also waits one round-trip time per request it takes.
    """
    down_end = links.down.transmit_end(start_s, transfer.down_bits)
    down_end += transfer.down_requests * links.rtt_s
    up_start = down_end + transfer.samples * links.seconds_per_sample
    base_start = up_start + transfer.up_requests * links.rtt_s
    base_end = links.up.transmit_end(base_start, transfer.up_bits - transfer.refine_bits)
    up_end = links.up.transmit_end(base_end, transfer.refine_bits)
    return Timeline(transfer.partition_id, start_s, down_end, up_start, base_end, up_end)


def apply_policy(
    timelines: list[Timeline], policy: str, start_s: float, deadline_s: float, keep: int
) -> tuple[dict[int, str], float]:
    """Each client's status (`delivered` / `partial` / `dropped`) and when the round ends.

    - `wait`: everyone is delivered; the round ends at the last arrival.
    - `drop`: a client whose update ends after `start_s + deadline_s` is dropped.
    - `partial`: like drop, but a client whose base arrived in time is `partial`.
    - `overcommit`: the first `keep` arrivals are delivered (ties: lower partition id).
    The round ends at the last arrival it waited for; under drop and partial, at the deadline
    when someone was late.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy '{policy}' is not one of {', '.join(POLICIES)}")
    arrivals = sorted(timelines, key=lambda t: (t.up_end, t.partition_id))
    if policy == "wait":
        status = {t.partition_id: "delivered" for t in arrivals}
    elif policy == "overcommit":
        status = {
            t.partition_id: "delivered" if i < keep else "dropped" for i, t in enumerate(arrivals)
        }
    else:
        deadline = start_s + deadline_s
        status = {t.partition_id: _by_deadline(t, deadline, policy) for t in arrivals}
        if not arrivals or any(s != "delivered" for s in status.values()):
            return status, deadline
    waited = [t.up_end for t in arrivals if status[t.partition_id] == "delivered"]
    return status, max(waited, default=start_s)


def _by_deadline(timeline: Timeline, deadline: float, policy: str) -> str:
    if timeline.up_end <= deadline:
        return "delivered"
    return "partial" if policy == "partial" and timeline.base_end <= deadline else "dropped"

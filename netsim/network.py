"""The clients' links, built once per client from its own seeded streams.

Every random stream is keyed by (seed, partition_id, stream): a client's rates and speed do not
depend on which other clients exist or on the order they are asked for.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from netsim.rounds import Links, Timeline, Transfer, client_timeline

UP_STREAM, DOWN_STREAM, COMPUTE_STREAM, PLACEMENT_STREAM = range(4)
NETWORK_TAG = 6  # keeps these streams apart from the other (seed, ...) streams of a run


def client_rng(seed: int, partition_id: int, stream: int) -> np.random.Generator:
    """The generator of one of a client's network streams."""
    return np.random.default_rng([seed, partition_id, NETWORK_TAG, stream])


def speed_factor(seed: int, partition_id: int, sigma: float) -> float:
    """A client's log-normal compute slowdown, median 1 (`sigma` 0: every device alike)."""
    return float(client_rng(seed, partition_id, COMPUTE_STREAM).lognormal(0.0, sigma))


class Network:
    """Links per client, made on first use by `make_links(partition_id)`."""

    def __init__(self, make_links: Callable[[int], Links]) -> None:
        self._make_links = make_links
        self._links: dict[int, Links] = {}

    def links(self, partition_id: int) -> Links:
        """A client's links (the same object every time)."""
        if partition_id not in self._links:
            self._links[partition_id] = self._make_links(partition_id)
        return self._links[partition_id]

    def timeline(self, start_s: float, transfer: Transfer) -> Timeline:
        """When the client's messages of a round starting at `start_s` start and end."""
        return client_timeline(self.links(transfer.partition_id), start_s, transfer)

    def rate_rows(self, start_s: float, end_s: float) -> list[dict]:
        """Every known client's rates on `[start_s, end_s)`, one row per constant piece."""
        rows = []
        for partition_id in sorted(self._links):
            links = self._links[partition_id]
            for direction, channel in (("down", links.down), ("up", links.up)):
                for piece_start, piece_end, rate in channel.segments(start_s, end_s):
                    rows.append(
                        {
                            "partition_id": partition_id,
                            "direction": direction,
                            "start_s": piece_start,
                            "end_s": piece_end,
                            "rate_bps": rate,
                        }
                    )
        return rows

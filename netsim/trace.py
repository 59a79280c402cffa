"""Channels from a user's CSV trace: rows `client, time_s, up_bps, down_bps`.

Each client's rates hold from their `time_s` until its next row; its first row is at time 0
and its last rate holds on. Every problem is a `TraceError` naming the file and the row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from netsim.channel import Channel

TRACE_COLUMNS = ("client", "time_s", "up_bps", "down_bps")


class TraceError(ValueError):
    """A trace file that is missing, malformed, or lacks a client."""


def load_trace(path: str | Path) -> dict[int, dict[str, Channel]]:
    """Read a trace into `{client: {"up": Channel, "down": Channel}}`."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"trace file '{path}' does not exist")
    try:
        table = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise TraceError(f"trace file '{path}' is not a CSV table: {error}") from None
    missing = [column for column in TRACE_COLUMNS if column not in table.columns]
    if missing or table.empty:
        raise TraceError(
            f"trace file '{path}' needs a header {','.join(TRACE_COLUMNS)} and one row or more"
            + (f"; missing: {', '.join(missing)}" if missing else "")
        )
    for column in TRACE_COLUMNS:
        values = pd.to_numeric(table[column], errors="coerce").astype(float)
        bad = values.isna() | ~np.isfinite(values) | (values < 0)
        if column == "client":
            bad |= values != values.round()
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise TraceError(
                f"trace file '{path}', data row {row + 1}: {column}={table[column].iloc[row]!r}; "
                "allowed: a finite number >= 0" + (" (an integer)" if column == "client" else "")
            )
        table[column] = values
    channels = {}
    for client, rows in table.groupby("client", sort=True):
        times = rows["time_s"].to_numpy(float)
        if times[0] != 0 or np.any(np.diff(times) <= 0):
            raise TraceError(
                f"trace file '{path}', client {int(client)}: time_s must start at 0 and "
                f"increase strictly (got {', '.join(f'{t:g}' for t in times[:5])}...)"
            )
        links = {}
        for direction in ("up", "down"):
            rates = rows[f"{direction}_bps"].to_numpy(float)
            if rates[-1] <= 0:
                raise TraceError(
                    f"trace file '{path}', client {int(client)}: the last {direction}_bps is 0, "
                    "so a payload could never arrive; allowed: a last rate > 0"
                )
            links[direction] = Channel(times, rates)
        channels[int(client)] = links
    return channels


def check_clients(channels: dict[int, dict[str, Channel]], clients: list[int], path: str) -> None:
    """Raise `TraceError` when the trace has no rows for some of `clients`."""
    missing = sorted(set(clients) - set(channels))
    if missing:
        raise TraceError(
            f"trace file '{path}' has no rows for client(s) {', '.join(map(str, missing))}; "
            f"it covers {', '.join(map(str, sorted(channels)))}"
        )

"""Set a deployed run's logged transport bytes against what its byte meters counted.

    python -m flower_app.transport_check outputs/<run-name>

bandwidth.csv models each message's transport bytes (`ledger.levels`); transport.csv holds what
really crossed each SuperNode's TCP connections, per HTTP request kind (`make deploy`). Per node
and message direction, the modelled bytes are compared with the measured exchanges that carry
messages (pulls of a message and its objects, confirmations; pushes of a reply and its
objects); the rest of a node's traffic (polls, heartbeats, the app bundle, registration)
belongs to no message and is listed as per-run costs, so that logged messages plus per-run
costs account for every byte the node sent and received. A second witness: the SuperLink's own
count of the run's traffic (`flwr ls`, saved as flower_traffic.json), against the logged
`flower_bytes` (the protobuf bodies and object contents Flower counts, no HTTP heads).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

FLOWER_TRAFFIC = "flower_traffic.json"  # the SuperLink's own count of the run's bytes
MESSAGE_REQUESTS = {
    "down": ("pull-messages", "pull-object", "confirm-message-received"),
    "up": ("push-messages", "push-object"),
}


def check(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per node and direction: logged vs measured message bytes; per node: the whole sum)."""
    messages = pd.read_csv(run_dir / "bandwidth.csv")
    transport = pd.read_csv(run_dir / "transport.csv")
    transport["bytes"] = transport["up_bytes"] + transport["down_bytes"]
    logged = messages.groupby(["partition_id", "direction"])["transport_bytes"].sum()
    rows = []
    for (partition_id, direction), modelled in logged.items():
        node = transport[transport["partition_id"] == partition_id]
        measured = node[node["request"].isin(MESSAGE_REQUESTS[direction])]
        rows.append(
            {
                "partition_id": partition_id,
                "direction": direction,
                "messages": int(
                    (
                        (messages["partition_id"] == partition_id)
                        & (messages["direction"] == direction)
                    ).sum()
                ),
                "logged_transport_bytes": int(modelled),
                "measured_bytes": int(measured["bytes"].sum()),
                "requests_logged": int(
                    messages.loc[
                        (messages["partition_id"] == partition_id)
                        & (messages["direction"] == direction),
                        "requests",
                    ].sum()
                ),
                "requests_measured": int(measured["requests"].sum()),
            }
        )
    per_message = pd.DataFrame(rows)
    per_message["ratio"] = per_message["logged_transport_bytes"] / per_message["measured_bytes"]
    all_message_requests = sum(MESSAGE_REQUESTS.values(), ())
    totals = []
    for partition_id, node in transport.groupby("partition_id"):
        per_run = node[~node["request"].isin(all_message_requests)]
        logged_node = int(logged.loc[partition_id].sum())
        totals.append(
            {
                "partition_id": partition_id,
                "logged_transport_bytes": logged_node,
                "per_run_bytes": int(per_run["bytes"].sum()),
                "per_run": ", ".join(
                    f"{r.request} {r.bytes:,}" for r in per_run.itertuples(index=False)
                ),
                "measured_tcp_bytes": int(node["bytes"].sum()),
            }
        )
    whole = pd.DataFrame(totals)
    whole["ratio"] = (whole["logged_transport_bytes"] + whole["per_run_bytes"]) / whole[
        "measured_tcp_bytes"
    ]
    return per_message, whole


def flower_counter(run_dir: Path) -> pd.DataFrame | None:
    """The logged `flower_bytes` against the SuperLink's own traffic counter for the run
    (`flower_traffic.json`, from `flwr ls`); None without it.

    Flower splits its count by HTTP direction (a pull's request is inbound, its response and
    the objects outbound; a push's request and objects inbound, its response outbound), not
    by the direction of the message, so the whole run is compared.
    """
    path = run_dir / FLOWER_TRAFFIC
    if not path.is_file():
        return None
    counted = json.loads(path.read_text())
    logged = int(pd.read_csv(run_dir / "bandwidth.csv")["flower_bytes"].sum())
    table = pd.DataFrame(
        [
            {
                "logged_flower_bytes": logged,
                "flower_inbound_bytes": int(counted["inbound-bytes"]),
                "flower_outbound_bytes": int(counted["outbound-bytes"]),
                "flower_counter_bytes": int(counted["total-bytes"]),
            }
        ]
    )
    table["ratio"] = table["logged_flower_bytes"] / table["flower_counter_bytes"]
    return table


def main(argv: list[str] | None = None) -> int:
    """Command line: print both tables of `check` for a deployed run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    if not (args.run_dir / "transport.csv").is_file():
        print(
            f"error: {args.run_dir} has no transport.csv (run it with make deploy)", file=sys.stderr
        )
        return 2
    print_check(args.run_dir)
    return 0


def print_check(run_dir: Path) -> None:
    """Print both tables of `check`."""
    per_message, whole = check(run_dir)
    with pd.option_context("display.width", 200, "display.max_colwidth", 120):
        print(per_message.to_string(index=False))
        print()
        print(whole.to_string(index=False))
        counter = flower_counter(run_dir)
        if counter is not None:
            print()
            print(counter.to_string(index=False))


if __name__ == "__main__":
    sys.exit(main())

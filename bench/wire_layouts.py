"""One message of each kind in both wire layouts, at the four levels, from real runs.

Runs `flower_app.simulation` for each preset and layout (`wire.layout` = compact, flower): the
logistic model on Fashion-MNIST, 4 clients all training, 2 rounds of one minibatch, and reads
partition 0's round-2 rows from bandwidth.csv: the dense model down and the update up, STC's
update and its one-round catch-up down, a 4-bit update, a top-k update. Prints the table
(payload bytes, content, message and transport bytes, requests) with the compact layout's
transport bytes as a share of Flower's. Targets (issue 28): STC update <= 6,000 transport
bytes in 4 requests, one-round STC catch-up <= 6,000 B in <= 5, 4-bit update <= 9,500 B in 4.

    python -m bench.wire_layouts [--out outputs/bench/wire-layouts]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from bench.common import REPO, run_app

COMMON = "model='logistic' fraction-train=1.0 num-server-rounds=2 local-steps=1 batch-size=100"
COMMON += " fraction-evaluate=0.0"
MESSAGES = (  # label, run-config, direction
    ("FedAvg model down", "strategy='fedavg'", "down"),
    ("FedAvg update up", "strategy='fedavg'", "up"),
    ("STC update up (p-up 0.01)", "strategy='stc' stc.p-up=0.01 stc.p-down=0.002", "up"),
    ("STC catch-up down (one round)", "strategy='stc' stc.p-up=0.01 stc.p-down=0.002", "down"),
    ("4-bit update up", "strategy='quant' quant.bits=4", "up"),
    ("top-k update up (p-up 0.01)", "strategy='topk' topk.p-up=0.01", "up"),
)
LAYOUTS = ("flower", "compact")
CLIENTS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "wire-layouts")
    args = parser.parse_args()
    rows_of: dict[tuple[str, str], pd.DataFrame] = {}
    for settings in dict.fromkeys(settings for _, settings, _ in MESSAGES):
        for layout in LAYOUTS:
            name = f"{settings.split()[0].split('=')[1].strip(chr(39))}-{layout}"
            run_dir = args.out / name
            if not (run_dir / "summary.json").is_file():
                config = f"{COMMON} {settings} wire.layout='{layout}'"
                run_app(config, CLIENTS, run_dir)
            rows = pd.read_csv(run_dir / "bandwidth.csv")
            rows_of[settings, layout] = rows[
                (rows["round"] == 2) & (rows["partition_id"] == 0) & (rows["phase"] == "train")
            ]
    table = []
    for label, settings, direction in MESSAGES:
        sizes = {}
        for layout in LAYOUTS:
            rows = rows_of[settings, layout]
            row = rows[rows["direction"] == direction].iloc[0]
            sizes[layout] = row
            table.append(
                {
                    "message": label,
                    "layout": layout,
                    "codec": row["codec"],
                    "payload": int(row["payload_bits"]) // 8,
                    "content": int(row["content_bytes"]),
                    "message_bytes": int(row["message_bytes"]),
                    "transport": int(row["transport_bytes"]),
                    "requests": int(row["requests"]),
                }
            )
        ratio = sizes["compact"]["transport_bytes"] / sizes["flower"]["transport_bytes"]
        table[-1]["compact_over_flower"] = round(ratio, 3)
    frame = pd.DataFrame(table).fillna("")
    print(frame.to_string(index=False))
    print(f"\nrun folders: {args.out}")


if __name__ == "__main__":
    main()

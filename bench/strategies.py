"""Flower's strategies wrapped, with and without codecs: bytes per round and accuracy.

Runs `flower_app.simulation` (the logistic model on Fashion-MNIST, 4 clients all training,
3 rounds of 10 minibatches) for each strategy and codec below and prints, per run, partition
0's train downlink in rounds 1 and 3 (transport bytes and the codec column: Flower's FedAdam
and QFedAvg return float64 models, so Flower itself sends twice the bytes from round 2 on),
the run's uplink and downlink transport bytes and the final test accuracy.

    python -m bench.strategies [--out outputs/bench/strategies]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from bench.common import REPO, run_app

COMMON = "model='logistic' fraction-train=1.0 num-server-rounds=3 local-steps=10"
RUNS = {
    "fedavg": "strategy='fedavg'",
    "fedadam": "strategy='fedadam'",
    "qfedavg": "strategy='qfedavg'",
    "fedmedian": "strategy='fedmedian'",
    "fedadam + stc": "strategy='fedadam' uplink='stc' downlink='stc'",
    "krum + quant 4-bit": "strategy='krum' uplink='quant' quant.bits=4",
    "fedprox + randomk": "strategy='fedprox' aggregation.proximal-mu=0.01 uplink='randomk'",
}
CLIENTS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "strategies")
    args = parser.parse_args()
    table = []
    for label, settings in RUNS.items():
        run_dir = args.out / label.replace(" + ", "-").replace(" ", "-")
        if not (run_dir / "summary.json").is_file():
            run_app(f"{COMMON} {settings}", CLIENTS, run_dir)
        rows = pd.read_csv(run_dir / "bandwidth.csv")
        down = rows[(rows["phase"] == "train") & (rows["direction"] == "down")]
        first = down[(down["partition_id"] == 0) & (down["round"] == 1)].iloc[0]
        last = down[(down["partition_id"] == 0) & (down["round"] == 3)].iloc[0]
        summary = json.loads((run_dir / "summary.json").read_text())
        totals = rows[rows["phase"] != "query"].groupby("direction")["transport_bytes"].sum()
        table.append(
            {
                "run": label,
                "down r1": f"{first['transport_bytes']} ({first['codec']})",
                "down r3": f"{last['transport_bytes']} ({last['codec']})",
                "up B": int(totals["up"]),
                "down B": int(totals["down"]),
                "accuracy": round(summary["final_test_accuracy"], 4),
            }
        )
    print(pd.DataFrame(table).to_string(index=False))
    print(f"\nrun folders: {args.out}")


if __name__ == "__main__":
    main()

"""Peak memory of a simulation whose clients all train at once, per codec and wire layout.

Each case is one run of `flower_app.simulation` in a subprocess: the CNN (6.65 MB float32),
200 clients, all of them training in each of 2 rounds (one local step), no federated
evaluation; a sampler adds up the resident memory of the run's whole process tree (driver,
Ray's processes and its actors) every 0.2 s. Printed per case: the peak, and its difference
from dense FedAvg in the same layout. Targets (issue 28): dense FedAvg <= 5 GB, every codec
within 0.5 GB of it.

    python -m bench.memory [--clients 200] [--cases fedavg stc ...] [--layouts compact flower]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from bench.common import run_app

CASES = {
    "fedavg": "strategy='fedavg'",
    "stc": "strategy='stc'",
    "topk": "strategy='topk'",
    "quant 4-bit": "strategy='quant' quant.bits=4",
    "qsfl": "strategy='qsfl'",
}
COMMON = "model='cnn' partitioner='iid' fraction-train=1.0 fraction-evaluate=0.0"
COMMON += " num-server-rounds=2 local-steps=1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--layouts", nargs="+", default=["compact", "flower"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for layout in args.layouts:
            for case in args.cases:
                settings = f"{COMMON} {CASES[case]} wire.layout='{layout}'"
                run_dir = Path(folder) / f"{case.replace(' ', '-')}-{layout}"
                run = run_app(settings, args.clients, run_dir)
                rows.append(
                    {"case": case, "layout": layout, "peak_rss_gb": run.peak_rss_bytes / 1e9}
                )
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    dense = table[table["case"] == "fedavg"].set_index("layout")["peak_rss_gb"]
    table["over_fedavg_gb"] = table["peak_rss_gb"] - table["layout"].map(dense)
    print(f"\nCNN, {args.clients} clients all training, 2 rounds")
    print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()

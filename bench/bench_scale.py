"""How a simulation scales with the number of clients: start-up, steady round, peak memory.

Each size is one run of `flower_app.simulation` in a subprocess, 10 clients a round, STC on
both links; a sampler adds up the resident memory of the run's whole process tree (the
driver, Ray's processes and its actors) every 0.2 s. Printed per size: start-up (process
start to round 1's first message, read from the log), the median wall time of rounds 2..R
(rounds.csv), the peak resident memory, and each against the smallest size's figure.
Targets (issue 18): peak memory grows by less than 1 GB from 100 to 10,000 logistic clients
and from 100 to 1,000 CNN clients; the steady round stays within 1.5x of the 100-client
figure; start-up under 60 s at 10,000 clients.

    python bench/bench_scale.py [--model logistic] [--clients 100 1000 10000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import run_app  # noqa: E402

PER_ROUND = 10


def run_size(model: str, clients: int, rounds: int, output: Path) -> dict:
    """One run with `clients` clients: its start-up, steady round and peak memory."""
    settings = (
        f"model='{model}' strategy='stc' num-server-rounds={rounds} "
        f"fraction-train={PER_ROUND / clients} fraction-evaluate=0.0 local-steps=5 "
        "partitioner='iid'"
    )
    run = run_app(settings, clients, output / f"{model}-{clients}")
    return {
        "clients": clients,
        "startup_s": run.startup_s,
        "round_s": statistics.median(run.round_s[1:]),  # rounds 2..R
        "peak_rss_gb": run.peak_rss_bytes / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="logistic")
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for clients in args.clients:
            rows.append(run_size(args.model, clients, args.rounds, Path(folder)))
            print(f"{args.model}, {clients} clients: {rows[-1]}", flush=True)
    table = pd.DataFrame(rows)
    first = table.iloc[0]
    table["round_x"] = table["round_s"] / first["round_s"]
    table["rss_growth_gb"] = table["peak_rss_gb"] - first["peak_rss_gb"]
    print(f"\n{args.model}, STC, {PER_ROUND} clients a round, {args.rounds} rounds")
    print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()

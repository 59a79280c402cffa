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
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]
PER_ROUND = 10


def tree_rss(root: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants (those still alive)."""
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total


def run_size(model: str, clients: int, rounds: int, output: Path) -> dict:
    """One run with `clients` clients: its start-up, steady round and peak memory."""
    settings = (
        f"model='{model}' strategy='stc' num-server-rounds={rounds} "
        f"fraction-train={PER_ROUND / clients} fraction-evaluate=0.0 local-steps=5 "
        f"partitioner='iid' output-dir='{output}' run-name='{model}-{clients}'"
    )
    command = [sys.executable, "-m", "flower_app.simulation", "--num-supernodes", str(clients)]
    started = time.perf_counter()
    process = subprocess.Popen(
        [*command, "--run-config", settings],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peak, first_round = [0], [None]
    root = psutil.Process(process.pid)

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss(root))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in process.stdout:
        if first_round[0] is None and "[ROUND 1/" in line:
            first_round[0] = time.perf_counter() - started
    process.wait()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{clients} clients: the run failed (exit {process.returncode})")
    walls = pd.read_csv(output / f"{model}-{clients}" / "rounds.csv")["wall_s"].tolist()
    return {
        "clients": clients,
        "startup_s": first_round[0],
        "round_s": statistics.median(walls[2:]),  # rounds 2..R (row 0 is the initial model)
        "peak_rss_gb": peak[0] / 1e9,
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

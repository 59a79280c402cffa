"""Flower app vs a bare single-process PyTorch loop doing the same FedAvg work, by size.

Same clients, partitions, selection, model, local work and central evaluation. For each case
(the logistic model at 50 clients, 25 a round, one local epoch and one local step; the CNN at
100 clients, 10 a round; Pythia-14m at 2 clients, one step, when transformers is installed)
one table row: the steady round of each (median of rounds 2..R; round 1 warms caches and
actors), their ratio, and the app's start-up (process start to round 1, read from its log).
Targets (issue 21): start-up under 5 s for 10 clients; the logistic model within 1.3x of the
bare loop at one epoch; the CNN within 1.1x.

    python bench/bench_overhead.py [--rounds 6] [--cases "logistic, 1 epoch" ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import run_app  # noqa: E402
from experiment.config import parse, resolve, selected_count  # noqa: E402
from experiment.models import build_model  # noqa: E402
from experiment.task import client_data, evaluate, local_train, test_data  # noqa: E402
from strategies.selection import TRAIN_STREAM, select_partitions  # noqa: E402


def bare_loop(overrides: dict, clients: int) -> list[float]:
    """FedAvg in one process; returns the wall time of each round."""
    config = parse(resolve(overrides))
    test = test_data(config)
    model = build_model(config.model, config.seed)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    times = []
    for server_round in range(1, config.num_server_rounds + 1):
        start = time.perf_counter()
        chosen = select_partitions(
            list(range(clients)),
            selected_count(clients, config.fraction_train),
            config.seed,
            server_round,
            TRAIN_STREAM,
        )
        total = {k: torch.zeros_like(v) for k, v in global_state.items()}
        examples = 0
        for pid in chosen:
            model.load_state_dict(global_state)
            data = client_data(config, pid, clients)
            local_train(model, data, config, server_round, pid)
            for key, value in model.state_dict().items():
                total[key] += value * len(data)
            examples += len(data)
        global_state = {k: v / examples for k, v in total.items()}
        model.load_state_dict(global_state)
        evaluate(model, test)
        times.append(time.perf_counter() - start)
    return times


CASES = {  # name: (clients, per round, run-config of the case)
    "logistic, 1 epoch": (50, 25, {"model": "logistic", "local-epochs": 1}),
    "logistic, 1 step": (50, 25, {"model": "logistic", "local-steps": 1}),
    "cnn, 1 epoch": (100, 10, {"model": "cnn", "local-epochs": 1}),
    "pythia-14m, 1 step": (
        2,
        2,
        {"model": "pythia-14m", "dataset": "shakespeare", "local-steps": 1, "batch-size": 8},
    ),
}


def measure(name: str, rounds: int, output: Path) -> dict:
    """One case through the app and through the bare loop, side by side."""
    clients, per_round, settings = CASES[name]
    overrides = settings | {
        "partitioner": "iid",
        "num-server-rounds": rounds,
        "fraction-train": per_round / clients,
        "fraction-evaluate": 0.0,
    }
    text = " ".join(
        f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in overrides.items()
    )
    app = run_app(text, clients, output / name.replace(", ", "-").replace(" ", "-"))
    bare = bare_loop(overrides, clients)
    app_steady, bare_steady = statistics.median(app.round_s[1:]), statistics.median(bare[1:])
    return {
        "case": f"{name} ({clients} clients, {per_round} a round)",
        "app_round_s": app_steady,
        "bare_round_s": bare_steady,
        "ratio": app_steady / bare_steady,
        "app_startup_s": app.startup_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    cases = [
        name
        for name in args.cases
        if not name.startswith("pythia") or importlib.util.find_spec("transformers")
    ]
    with tempfile.TemporaryDirectory() as output:
        rows = [measure(name, args.rounds, Path(output)) for name in cases]
    table = pd.DataFrame(rows)
    print(f"steady round: median of rounds 2..{args.rounds}; start-up: process start to round 1")
    print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()

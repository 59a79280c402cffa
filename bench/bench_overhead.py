"""Flower app vs a bare single-process PyTorch loop doing the same FedAvg work.

Same clients, partitions, selection, model, local epochs and central evaluation. Prints the
steady-state round time of each (rounds 2..R; round 1 warms caches and actors) and their
ratio; the app's start-up (Ray, actors, discovery) is reported apart.
Target (issue 2): app within 1.5x of the bare loop at 100 clients, 10 per round, 1 epoch.

    python bench/bench_overhead.py [--clients 100] [--fraction 0.1] [--rounds 5] [--model cnn]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

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


def app_run(overrides: dict, clients: int, output_dir: str) -> tuple[list[float], float]:
    """The same work through the app (run_simulation); returns round times and total wall."""
    run_config = " ".join(
        f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
        for k, v in (overrides | {"output-dir": output_dir}).items()
    )
    start = time.perf_counter()
    output = subprocess.run(
        [
            sys.executable,
            "-m",
            "flower_app.simulation",
            "--num-supernodes",
            str(clients),
            "--run-config",
            run_config,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    total = time.perf_counter() - start
    if output.returncode != 0:
        sys.exit(f"app run failed:\n{output.stderr[-3000:]}")
    run_dir = Path(output.stdout.strip().splitlines()[-1].removeprefix("run folder: "))
    rounds = pd.read_csv(run_dir / "rounds.csv")
    return rounds[rounds["round"] > 0]["wall_s"].tolist(), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default="cnn")
    args = parser.parse_args()
    overrides = {
        "model": args.model,
        "partitioner": "iid",
        "num-server-rounds": args.rounds,
        "fraction-train": args.fraction,
        "local-epochs": 1,
    }
    with tempfile.TemporaryDirectory() as output_dir:
        app_rounds, app_total = app_run(overrides, args.clients, output_dir)
    bare_rounds = bare_loop(overrides, args.clients)
    app_steady = statistics.median(app_rounds[1:])
    bare_steady = statistics.median(bare_rounds[1:])
    print(
        f"{args.clients} clients, {selected_count(args.clients, args.fraction)} per round, "
        f"{args.model}, 1 local epoch, {args.rounds} rounds (median of rounds 2..{args.rounds})"
    )
    print(f"{'':24}{'app':>10}{'bare loop':>12}")
    print(f"{'round 1 (warm-up) s':24}{app_rounds[0]:>10.2f}{bare_rounds[0]:>12.2f}")
    print(f"{'steady round s':24}{app_steady:>10.2f}{bare_steady:>12.2f}")
    print(f"{'app start-up s':24}{app_total - sum(app_rounds):>10.2f}")
    print(f"ratio app / bare (steady): {app_steady / bare_steady:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()

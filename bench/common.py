"""Shared by the benchmarks: the Pythia-14m tensor shapes, a paired timer, a timed app run."""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]

HIDDEN, LAYERS, INTERMEDIATE, VOCAB = 128, 6, 512, 50304


def pythia_14m_shapes() -> list[tuple[int, ...]]:
    """Parameter shapes of Pythia-14m (embeddings untied, LayerNorms with bias)."""
    layer = [
        (HIDDEN,),
        (HIDDEN,),  # input layernorm
        (HIDDEN,),
        (HIDDEN,),  # post-attention layernorm
        (3 * HIDDEN, HIDDEN),
        (3 * HIDDEN,),  # query_key_value
        (HIDDEN, HIDDEN),
        (HIDDEN,),  # attention dense
        (INTERMEDIATE, HIDDEN),
        (INTERMEDIATE,),  # mlp up
        (HIDDEN, INTERMEDIATE),
        (HIDDEN,),  # mlp down
    ]
    return [(VOCAB, HIDDEN)] + layer * LAYERS + [(HIDDEN,), (HIDDEN,), (VOCAB, HIDDEN)]


def paired_times(baseline, action, repeats: int) -> tuple[float, float, float]:
    """Time `baseline` and `action` alternately: (median baseline s, median action s, ratio).

    The ratio is the median of the per-pair ratios, so that a slow spell of a noisy machine
    slows both sides of a pair instead of one column of the table.
    """
    pairs = []
    for _ in range(repeats):
        pair = []
        for call in (baseline, action):
            start = time.perf_counter()
            call()
            pair.append(time.perf_counter() - start)
        pairs.append(pair)
    base, timed = zip(*pairs, strict=True)
    ratio = statistics.median(t / b for b, t in pairs)
    return statistics.median(base), statistics.median(timed), ratio


@dataclass
class AppRun:
    """One run of the app: start-up, each training round's wall time, peak memory."""

    startup_s: float  # process start to the first training round's start (its log line)
    round_s: list[float]  # rounds 1..R (rounds.csv wall_s)
    peak_rss_bytes: int  # the run's whole process tree (driver, Ray, actors), sampled


def run_app(settings: str, clients: int, run_dir: Path) -> AppRun:
    """`flower_app.simulation` with `settings` (run-config text) writing to `run_dir`."""
    command = [sys.executable, "-m", "flower_app.simulation", "--num-supernodes", str(clients)]
    run_config = f"{settings} output-dir='{run_dir.parent}' run-name='{run_dir.name}'"
    started = time.perf_counter()
    process = subprocess.Popen(
        [*command, "--run-config", run_config],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peak, first_round, tail = [0], [0.0], []
    root = psutil.Process(process.pid)

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss(root))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in process.stdout:
        if not first_round[0] and "[ROUND 1/" in line:
            first_round[0] = time.perf_counter() - started
        tail = [*tail[-40:], line]
    process.wait()
    sampler.join()
    if process.returncode != 0:
        sys.exit(f"app run failed ({clients} clients):\n{''.join(tail)}")
    rounds = pd.read_csv(run_dir / "rounds.csv")
    return AppRun(first_round[0], rounds[rounds["round"] > 0]["wall_s"].tolist(), peak[0])


def tree_rss(root: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants (those still alive)."""
    total = 0
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:  # the root ended between two samples
        return 0
    for process in tree:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total

"""PNG plots of a run folder, read back from its CSV logs with pandas."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

MAX_LEGEND_CLIENTS = 12


def plot_channels(run_dir: Path) -> Path:
    """Each client's uplink and downlink rate over simulated time (channels.csv)."""
    rates = pd.read_csv(run_dir / "channels.csv")
    figure, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for axis, direction in zip(axes, ("up", "down"), strict=True):
        for client, rows in rates[rates["direction"] == direction].groupby("partition_id"):
            rows = rows.sort_values("start_s")
            times = [*rows["start_s"], rows["end_s"].iloc[-1]]
            values = [*rows["rate_bps"] / 1e6, rows["rate_bps"].iloc[-1] / 1e6]
            axis.step(times, values, where="post", linewidth=1, label=f"client {client}")
        axis.set_ylabel(f"{direction}link rate (Mbit/s)")
        axis.grid(alpha=0.3)
    if rates["partition_id"].nunique() <= MAX_LEGEND_CLIENTS:
        axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    axes[1].set_xlabel("simulated time (s)")
    figure.suptitle("Channel rate of each client")
    return _save(figure, run_dir / "channels.png")


def plot_accuracy_vs_time(run_dir: Path) -> Path:
    """Test accuracy after each round against the simulated time at its end."""
    rounds = pd.read_csv(run_dir / "rounds.csv")
    figure, axis = plt.subplots(figsize=(8, 5))
    axis.plot(rounds["sim_time_s"], rounds["test_accuracy"], marker="o", markersize=3)
    axis.set_xlabel("simulated time (s)")
    axis.set_ylabel("test accuracy")
    axis.set_title(f"Accuracy vs simulated time: {run_dir.name}")
    axis.grid(alpha=0.3)
    return _save(figure, run_dir / "accuracy_vs_time.png")


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path

"""PNG plots of a run folder, read back from its CSV logs with pandas."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

MAX_LEGEND_CLIENTS = 12
MB = 1e6


def write_run_plots(run_dir: Path) -> list[Path]:
    """Every plot of a run folder: bytes, and on a simulated network, time and rates."""
    run_dir = Path(run_dir)
    paths = [plot_accuracy_vs_bytes(run_dir), plot_bytes_per_round(run_dir)]
    if pd.read_csv(run_dir / "rounds.csv")["sim_time_s"].notna().any():
        paths.append(plot_accuracy_vs_time(run_dir))
    if (run_dir / "channels.csv").is_file():
        paths.append(plot_channels(run_dir))
    return paths


def plot_accuracy_vs_bytes(run_dir: Path) -> Path:
    """Test accuracy against the cumulative uplink bytes and against all bytes."""
    rounds = pd.read_csv(run_dir / "rounds.csv")
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for axis, column, label in (
        (axes[0], "cum_up_transport_bytes", "cumulative uplink (MB, transport)"),
        (axes[1], "cum_transport_bytes", "cumulative uplink + downlink (MB, transport)"),
    ):
        axis.plot(rounds[column] / MB, rounds["test_accuracy"], marker="o", markersize=3)
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    figure.suptitle(f"Accuracy vs bytes: {run_dir.name}")
    return _save(figure, run_dir / "accuracy_vs_bytes.png")


def plot_bytes_per_round(run_dir: Path) -> Path:
    """Bytes sent each round, uplink and downlink side by side."""
    rounds = pd.read_csv(run_dir / "rounds.csv")
    rounds = rounds[rounds["round"] > 0]
    figure, axis = plt.subplots(figsize=(8, 4.5))
    width = 0.4
    axis.bar(rounds["round"] - width / 2, rounds["up_transport_bytes"] / MB, width, label="uplink")
    axis.bar(
        rounds["round"] + width / 2, rounds["down_transport_bytes"] / MB, width, label="downlink"
    )
    axis.set_xlabel("round")
    axis.set_ylabel("bytes per round (MB, transport)")
    axis.set_title(f"Bytes per round: {run_dir.name}")
    axis.legend()
    axis.grid(alpha=0.3, axis="y")
    return _save(figure, run_dir / "bytes_per_round.png")


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


def plot_comparison(folder: Path, run_dirs: dict[str, list[Path]]) -> list[Path]:
    """One figure per question, one line per run (the mean over its seeds' rounds)."""
    means = {name: _mean_rounds(folders) for name, folders in run_dirs.items() if folders}
    palette = plt.get_cmap("tab10" if len(means) <= 10 else "tab20")
    color = {name: palette(index % palette.N) for index, name in enumerate(means)}
    questions = [
        (
            "cum_up_transport_bytes",
            "cumulative uplink (MB transport, log scale)",
            "accuracy_vs_uplink.png",
        ),
        (
            "cum_transport_bytes",
            "cumulative uplink + downlink (MB transport, log scale)",
            "accuracy_vs_total.png",
        ),
    ]
    if any(rounds["sim_time_s"].notna().any() for rounds in means.values()):
        questions.append(("sim_time_s", "simulated time (s)", "accuracy_vs_sim_time.png"))
    paths = []
    for column, label, filename in questions:
        figure, axis = plt.subplots(figsize=(8, 5))
        for name, rounds in means.items():
            trained = rounds[rounds["round"] > 0]  # round 0 carries only the partition query
            x = trained[column] / (MB if "bytes" in column else 1)
            axis.plot(
                x, trained["test_accuracy"], marker="o", markersize=3, label=name, color=color[name]
            )
        if "bytes" in column:
            axis.set_xscale("log")
        axis.set_xlabel(label)
        axis.set_ylabel("test accuracy")
        axis.legend(fontsize="small")
        axis.grid(alpha=0.3)
        paths.append(_save(figure, folder / filename))
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for axis, column, label in (
        (axes[0], "up_transport_bytes", "uplink"),
        (axes[1], "down_transport_bytes", "downlink"),
    ):
        for name, rounds in means.items():
            trained = rounds[rounds["round"] > 0]
            axis.plot(
                trained["round"],
                trained[column] / MB,
                marker="o",
                markersize=3,
                label=name,
                color=color[name],
            )
        axis.set_yscale("log")
        axis.set_xlabel("round")
        axis.set_title(f"{label} bytes per round")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("MB per round (log scale)")
    axes[0].legend(fontsize="small")
    paths.append(_save(figure, folder / "bytes_per_round.png"))
    return paths


def _mean_rounds(folders: list[Path]) -> pd.DataFrame:
    """rounds.csv averaged round by round over several seeds' run folders."""
    frames = [pd.read_csv(Path(folder) / "rounds.csv") for folder in folders]
    return pd.concat(frames).groupby("round", as_index=False).mean(numeric_only=True)

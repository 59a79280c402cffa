"""Read one run folder with pandas: print its summary and write its plots.

Byte figures are transport-level bytes sent unless their key names another level.

python -m flower_app.report outputs/<run-name> [--target-accuracy 0.8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from flower_app.plots import write_run_plots
from ledger.book import LEVELS, TRAIN_PHASES

RUN_FILES = ("rounds.csv", "bandwidth.csv")


class RunFolderError(ValueError):
    """A folder that does not hold a run's logs."""


def read_run(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The run's rounds.csv and bandwidth.csv."""
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise RunFolderError(f"'{run_dir}' is not a run folder: no {', '.join(missing)}")
    return pd.read_csv(run_dir / "rounds.csv"), pd.read_csv(run_dir / "bandwidth.csv")


def summarize(run_dir: Path, target_accuracy: float | None = None) -> dict[str, Any]:
    """Accuracy, bytes and simulated time of one run; what it took to reach the target.

    Bytes are sent bytes at the transport level unless the key names another level.
    `uplink_compression_<level>` is the float32 size of the updates the clients sent over what
    their messages cost at that level (payload: the codec's bits; transport: Flower's HTTP).
    """
    rounds, messages = read_run(Path(run_dir))
    last = rounds.iloc[-1]
    sent_updates = messages[
        messages["phase"].isin(TRAIN_PHASES)
        & (messages["direction"] == "up")
        & (messages["status"] != "failed")
    ]
    summary = {
        "run": Path(run_dir).name,
        "rounds": int(last["round"]),
        "final_accuracy": float(last["test_accuracy"]),
        "best_accuracy": float(rounds["test_accuracy"].max()),
        "up_bytes": int(last["cum_up_transport_bytes"]),
        "down_bytes": int(last["cum_down_transport_bytes"]),
        "total_bytes": int(last["cum_transport_bytes"]),
        "total_content_bytes": int(last["cum_content_bytes"]),
    }
    dense = sent_updates["dense_bytes"].sum()
    sizes = {"payload": sent_updates["payload_bits"].sum() / 8}
    sizes |= {level: sent_updates[f"{level}_bytes"].sum() for level in LEVELS[1:]}
    for level, size in sizes.items():
        summary[f"uplink_compression_{level}"] = float(dense / size) if size else float("nan")
    summary["sim_time_s"] = None if pd.isna(last["sim_time_s"]) else float(last["sim_time_s"])
    summary["updates_by_status"] = sent_updates["status"].value_counts().sort_index().to_dict()
    if target_accuracy is not None:
        reached = rounds[rounds["test_accuracy"] >= target_accuracy]
        first = reached.iloc[0] if len(reached) else None
        summary["target_accuracy"] = target_accuracy
        summary["to_target_round"] = None if first is None else int(first["round"])
        summary["to_target_up_bytes"] = (
            None if first is None else int(first["cum_up_transport_bytes"])
        )
        summary["to_target_total_bytes"] = (
            None if first is None else int(first["cum_transport_bytes"])
        )
        summary["to_target_sim_time_s"] = (
            None if first is None or pd.isna(first["sim_time_s"]) else float(first["sim_time_s"])
        )
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as aligned `key: value` lines (bytes also in MB)."""
    lines = []
    for key, value in summary.items():
        if key.endswith("bytes") and isinstance(value, int):
            value = f"{value:,} B ({value / 1e6:.2f} MB)"
        elif isinstance(value, float):
            value = f"{value:.4g}"
        elif value is None:
            value = "-"
        lines.append(f"{key:>24}: {value}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: print a run's summary and write its plots beside its logs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--target-accuracy", type=float, default=None)
    args = parser.parse_args(argv)
    try:
        summary = summarize(args.run_dir, args.target_accuracy)
    except RunFolderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    for path in write_run_plots(args.run_dir):
        print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

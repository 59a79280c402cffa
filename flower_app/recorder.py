"""Append-only run logs: run_config.json, bandwidth.csv, rounds.csv, summary.json, and
channels.csv (the simulated link rates) when a network is simulated.

Rows are appended and flushed as they come, never rewritten: a run killed in round 7
leaves every row of rounds 1..6 complete on disk.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

BANDWIDTH_COLUMNS = (
    "round",
    "partition_id",
    "phase",
    "direction",
    "codec",
    "payload_bits",
    "wire_bytes",
    "client_bytes",
    "dense_bytes",
    "status",
    "sim_start_s",
    "sim_end_s",
)
ROUND_COLUMNS = (
    "round",
    "selected",
    "delivered",
    "up_bytes",
    "down_bytes",
    "cum_up_bytes",
    "cum_down_bytes",
    "cum_bytes",
    "train_loss",
    "test_loss",
    "test_accuracy",
    "sim_time_s",
    "wall_s",
)
RATE_COLUMNS = ("partition_id", "direction", "start_s", "end_s", "rate_bps")


class _CsvLog:
    """One CSV file opened for appending, with a fixed header written once."""

    def __init__(self, path: Path, columns: tuple[str, ...]) -> None:
        is_new = not path.exists() or path.stat().st_size == 0
        self._file = path.open("a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=columns, extrasaction="raise")
        if is_new:
            self._writer.writeheader()
            self._file.flush()

    def append(self, row: dict[str, Any]) -> None:
        self._writer.writerow(row)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class Recorder:
    """Writes one run's logs into `run_dir`.

    Parameters
    ----------
    run_dir : Path
        The run folder; created if missing. An existing `bandwidth.csv` there is an error,
        so two runs never mix their rows.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        if (self.run_dir / "bandwidth.csv").exists():
            raise FileExistsError(f"{self.run_dir} already holds a run; choose another run-name")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._messages = _CsvLog(self.run_dir / "bandwidth.csv", BANDWIDTH_COLUMNS)
        self._rounds = _CsvLog(self.run_dir / "rounds.csv", ROUND_COLUMNS)
        self._rates: _CsvLog | None = None  # opened on the first rates

    def write_config(self, config: dict[str, Any]) -> None:
        """Write the resolved run-config, first thing in a run."""
        _write_json(self.run_dir / "run_config.json", config)

    def log_message(self, row: dict[str, Any]) -> None:
        """Append one message's row to bandwidth.csv (flushed with its round)."""
        self._messages.append(row)

    def log_rates(self, rows: list[dict[str, Any]]) -> None:
        """Append simulated link rates to channels.csv (flushed with their round)."""
        if self._rates is None:
            self._rates = _CsvLog(self.run_dir / "channels.csv", RATE_COLUMNS)
        for row in rows:
            self._rates.append(row)

    def log_round(self, row: dict[str, Any]) -> None:
        """Append one round's row and flush the CSV files."""
        self._messages.flush()
        if self._rates is not None:
            self._rates.flush()
        self._rounds.append(row)
        self._rounds.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        """Write summary.json and close the CSV files."""
        self._messages.flush()
        _write_json(self.run_dir / "summary.json", summary)
        self._messages.close()
        self._rounds.close()
        if self._rates is not None:
            self._rates.close()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")

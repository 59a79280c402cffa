"""Append-only run logs: run_config.json, bandwidth.csv, rounds.csv, summary.json, and
channels.csv (the simulated link rates) when a network is simulated; a preset may add its own
(QSFL: selection.csv, segments.csv).

Rows are appended and flushed as they come, never rewritten: a run killed in round 7
leaves every row of rounds 1..6 complete on disk.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from ledger.book import BANDWIDTH_COLUMNS

ROUND_COLUMNS = (
    "round",
    "selected",
    "delivered",
    "up_transport_bytes",
    "down_transport_bytes",
    "cum_up_transport_bytes",
    "cum_down_transport_bytes",
    "cum_transport_bytes",
    "up_content_bytes",
    "down_content_bytes",
    "cum_content_bytes",
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
    resume : bool
        Append to the logs already there (a resumed run, its logs cut to its checkpoint).
    """

    def __init__(self, run_dir: Path, resume: bool = False) -> None:
        self.run_dir = Path(run_dir)
        if not resume and (self.run_dir / "bandwidth.csv").exists():
            raise FileExistsError(f"{self.run_dir} already holds a run; choose another run-name")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._messages = _CsvLog(self.run_dir / "bandwidth.csv", BANDWIDTH_COLUMNS)
        self._rounds = _CsvLog(self.run_dir / "rounds.csv", ROUND_COLUMNS)
        self._tables: dict[str, _CsvLog] = {}  # further logs, each opened on its first rows

    def write_config(self, config: dict[str, Any]) -> None:
        """Write the resolved run-config, first thing in a run."""
        _write_json(self.run_dir / "run_config.json", config)

    def log_message(self, row: dict[str, Any]) -> None:
        """Append one message's row to bandwidth.csv (flushed with its round)."""
        self._messages.append(row)

    def log_rates(self, rows: list[dict[str, Any]]) -> None:
        """Append simulated link rates to channels.csv (flushed with their round)."""
        self.log_rows("channels.csv", RATE_COLUMNS, rows)

    def log_rows(self, name: str, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
        """Append rows to the CSV file `name` of the run (flushed with their round)."""
        if name not in self._tables:
            self._tables[name] = _CsvLog(self.run_dir / name, columns)
        for row in rows:
            self._tables[name].append(row)

    def log_round(self, row: dict[str, Any]) -> None:
        """Append one round's row and flush the CSV files."""
        self._messages.flush()
        for table in self._tables.values():
            table.flush()
        self._rounds.append(row)
        self._rounds.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        """Write summary.json and close the CSV files."""
        self._messages.flush()
        _write_json(self.run_dir / "summary.json", summary)
        for log in (self._messages, self._rounds, *self._tables.values()):
            log.close()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Strict JSON: a NaN or infinite number is written as null."""
    text = json.dumps(_finite(data), indent=2, sort_keys=False, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value

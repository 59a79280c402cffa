"""Resumable runs: a checkpoint after every round, and what resuming a killed run restores.

After round r's row is written, `checkpoint.npz` in the run folder is replaced atomically by
one holding the round, the global model, the strategy's state (`BandwidthFedAvg.run_state`:
the network clock, the ledger's totals, STC's deltas, sync map and residual, ...), the round
rows so far (for the summary) and the size of every log file. The clients' states are kept
by round in the run folder (mods/state_mod.py). Resuming truncates each log to its size at
the checkpoint (the half-written rows of the killed round go), drops the clients' states of
later rounds and goes on at round r + 1. Every random stream is keyed by (seed, round,
partition), so no generator position needs saving. The file holds JSON and raw arrays, no
pickle (flower_app/safe_state.py): reading one runs no code from the folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from experiment.config import ConfigError
from flower_app import safe_state
from mods.state_mod import PartitionStates

CHECKPOINT = "checkpoint.npz"
CLIENT_STATE = "client-state"  # the clients' states by partition and round (simulation)
NOT_COMPARED = ("resume", "run-dir", "output-dir")  # keys a resumed run may set otherwise


@dataclass
class Checkpoint:
    """A run's state after `server_round`."""

    server_round: int
    clients: int
    model: dict[str, np.ndarray]
    strategy: dict[str, Any]
    rows: list[dict[str, Any]]
    log_sizes: dict[str, int]  # CSV file name -> bytes written by the end of the round


def save(run_dir: Path, checkpoint: Checkpoint) -> None:
    """Write the checkpoint beside the logs, replacing the last one atomically."""
    safe_state.dump(vars(checkpoint), run_dir / CHECKPOINT)


def log_sizes(run_dir: Path) -> dict[str, int]:
    """The size of every CSV log of the run, its rows on disk (call after they are flushed)."""
    sizes = {}
    for path in sorted(run_dir.glob("*.csv")):
        with path.open("rb") as file:
            os.fsync(file.fileno())
            sizes[path.name] = os.fstat(file.fileno()).st_size
    return sizes


def load(run_dir: Path) -> Checkpoint | None:
    """The run's last checkpoint; None when no training round finished."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        return None
    try:
        checkpoint = Checkpoint(**safe_state.load(path))
        if not isinstance(checkpoint.server_round, int) or not isinstance(checkpoint.model, dict):
            raise safe_state.StateError("its round or model is missing")
        return checkpoint
    except (safe_state.StateError, TypeError) as error:
        raise ConfigError(
            f"resume=true: {path} cannot be read ({error}); allowed: a checkpoint this "
            "version of the app wrote, or a new run-name"
        ) from None


def check_resumable(run_dir: Path, settings: dict[str, Any]) -> None:
    """The run in `run_dir` exists, did not finish and ran with these `settings` (flat)."""
    config_file = run_dir / "run_config.json"
    if not config_file.is_file():
        raise ConfigError(f"resume=true: {run_dir} holds no run to resume (no run_config.json)")
    if (run_dir / "summary.json").exists():
        raise ConfigError(f"resume=true: the run in {run_dir} finished; nothing to resume")
    stored = json.loads(config_file.read_text(encoding="utf-8"))
    changed = sorted(
        key
        for key in stored.keys() | settings.keys()
        if key not in NOT_COMPARED and stored.get(key) != settings.get(key)
    )
    if changed:
        raise ConfigError(
            f"resume=true: the run in {run_dir} ran with other settings ({', '.join(changed)}); "
            "allowed: its own settings (its run_config.json), or a new run-name"
        )


def check_clients(checkpoint: Checkpoint | None, clients: int, run_dir: Path) -> None:
    """A run resumes with the number of clients it had."""
    if checkpoint is not None and checkpoint.clients != clients:
        raise ConfigError(
            f"resume=true: the run in {run_dir} had {checkpoint.clients} clients, not "
            f"{clients}; allowed: num-supernodes={checkpoint.clients}"
        )


def resume_point(run_dir: Path, settings: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint to resume `run_dir` from (None: no round finished, start over there).

    Checks the run (`check_resumable`), then truncates its logs to the checkpoint and drops
    its clients' states of later rounds.
    """
    check_resumable(run_dir, settings)
    checkpoint = load(run_dir)
    sizes = checkpoint.log_sizes if checkpoint else {}
    for log in run_dir.glob("*.csv"):
        if log.stat().st_size < sizes.get(log.name, 0):  # truncating would pad with NULs
            raise ConfigError(
                f"resume=true: {log} holds {log.stat().st_size} bytes, fewer than the "
                f"{sizes[log.name]} the checkpoint recorded; the run cannot be resumed"
            )
    for log in run_dir.glob("*.csv"):
        if sizes.get(log.name):
            os.truncate(log, sizes[log.name])
        else:
            log.unlink()  # begun after the checkpoint: written again with its header
    done = checkpoint.server_round if checkpoint else 0
    states = run_dir / CLIENT_STATE
    for partition in states.iterdir() if states.is_dir() else ():
        PartitionStates(states, int(partition.name)).drop_after(done)
    return checkpoint


def resume_overrides(run_dir: Path) -> dict[str, Any]:
    """The run-config that resumes the run in `run_dir` (its own, with resume = true)."""
    config_file = run_dir / "run_config.json"
    if not config_file.is_file():
        raise ConfigError(f"--resume {run_dir}: no run_config.json there; give a run folder")
    stored = json.loads(config_file.read_text(encoding="utf-8"))
    stored.pop("run-dir", None)
    return stored | {"resume": True, "run-name": run_dir.name, "output-dir": str(run_dir.parent)}


def resume_clients(run_dir: Path | None, given: int | None, default: int = 20) -> int:
    """The number of clients for the command line: given, or a resumed run's own, or default."""
    if given is not None:
        return given
    checkpoint = load(run_dir) if run_dir is not None else None
    return checkpoint.clients if checkpoint is not None else default


def link_client_states(run_dir: Path, link: Path) -> None:
    """Point the clients of this Flower run (`link`) at the run folder's client states."""
    folder = run_dir / CLIENT_STATE
    folder.mkdir(exist_ok=True)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(folder, target_is_directory=True)


def run_rounds(
    strategy: Strategy,
    done: int,
    *,
    num_rounds: int,
    evaluate_fn: Callable[[int, ArrayRecord], MetricRecord],
    end_of_round: Callable[[int, ArrayRecord], None],
    **start: Any,
) -> None:
    """Flower's `start` for rounds done + 1 .. num_rounds; `end_of_round` after each row
    of a training round.

    A resumed run (`done` > 0) skips the evaluation of round 0, which is on record.
    """

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if done and server_round == 0:
            return None
        metrics = evaluate_fn(server_round + done, arrays)
        if server_round + done > 0:
            end_of_round(server_round + done, arrays)
        return metrics

    runner = ResumedRounds(strategy, done) if done else strategy
    type(strategy).start(runner, num_rounds=num_rounds - done, evaluate_fn=evaluate, **start)


class ResumedRounds:
    """The strategy as Flower's `start` sees it in a resumed run: its round k is done + k."""

    def __init__(self, strategy: Strategy, done: int) -> None:
        self._strategy = strategy
        self._done = done

    def __getattr__(self, name: str) -> Any:
        return getattr(self._strategy, name)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._strategy.configure_train(server_round + self._done, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Any:
        return self._strategy.aggregate_train(server_round + self._done, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._strategy.configure_evaluate(server_round + self._done, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> Any:
        return self._strategy.aggregate_evaluate(server_round + self._done, replies)

"""Everything a run needs, checked before anything starts: one line and exit 2 when wrong.

The launchers (`flwr run` on an own SuperLink, `make deploy`) and the Python API call
`preflight` before they start a SuperLink or Ray: the run-config, the data, the network
settings, that each round selects a client, that every partition holds samples, and that the
run folder is free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiment.config import (
    MODEL_INPUTS,
    ConfigError,
    ExperimentConfig,
    check_selection,
    default_run_name,
    parse,
)
from experiment.dataset import Dataset, input_kind
from experiment.task import dataset_of, partition_indices
from flower_app.checkpoint import check_clients, check_resumable, load
from flower_app.run_lock import check_free
from strategies.network import check_network


def preflight(flat: dict[str, Any], num_supernodes: int) -> tuple[ExperimentConfig, Path]:
    """Validate a resolved flat run-config for `num_supernodes` clients; (config, run folder)."""
    if num_supernodes < 1:
        raise ConfigError(f"num-supernodes={num_supernodes} is out of range; allowed: >= 1")
    config = parse(flat)
    check_model_reads(config, dataset_of(config))  # missing data fails here
    check_selection(config, num_supernodes)
    check_partitions(config, num_supernodes)
    check_network(config.net, config.seed, num_supernodes)
    run_dir = Path(config.output_dir).resolve() / default_run_name(config)
    if config.resume:
        check_free(run_dir)  # a command still writing it: one line, nothing touched
        check_resumable(run_dir, config.to_flat())
        check_clients(load(run_dir), num_supernodes, run_dir)
    else:
        check_run_dir(run_dir)
    return config, run_dir


def check_model_reads(config: ExperimentConfig, dataset: Dataset) -> None:
    """The model must read what the dataset holds (for a `hub:` dataset known once loaded)."""
    held = input_kind(dataset.train_inputs)
    if MODEL_INPUTS[config.model] != held:
        wanted = [name for name, inputs in MODEL_INPUTS.items() if inputs == held]
        raise ConfigError(
            f"model='{config.model}' does not read the {held} inputs of dataset="
            f"'{config.dataset}' (shape {dataset.train_inputs.shape[1:]}); allowed with this "
            f"dataset: model in {', '.join(wanted)}"
        )


def check_partitions(config: ExperimentConfig, num_partitions: int) -> None:
    """Every client's partition must hold at least one training sample."""
    try:
        sizes = [len(indices) for indices in partition_indices(config, num_partitions)]
    except ValueError as error:  # more clients than samples
        raise ConfigError(f"num-supernodes={num_partitions}: {error}; allowed: fewer") from None
    empty = [index for index, size in enumerate(sizes) if size == 0]
    if empty:
        shown = ", ".join(map(str, empty[:5])) + (", ..." if len(empty) > 5 else "")
        raise ConfigError(
            f"num-supernodes={num_partitions} leaves {len(empty)} partition(s) without a sample "
            f"({shown}) under partitioner='{config.partitioner}' on {sum(sizes)} samples; "
            "allowed: fewer clients, or another partitioner"
        )


def check_run_dir(run_dir: Path) -> None:
    """The run folder must be new (or empty), and its parent a folder."""
    if run_dir.parent.exists() and not run_dir.parent.is_dir():
        raise ConfigError(f"output-dir='{run_dir.parent}' is a file; give a folder for the logs")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(
            f"run-name='{run_dir.name}': {run_dir} already holds a run; "
            "allowed: a new run-name, or remove that folder"
        )

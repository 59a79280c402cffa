"""The ServerApp: validate the config, discover clients, run the strategy, write the logs."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from logging import ERROR, INFO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from experiment.config import (
    ConfigError,
    ExperimentConfig,
    check_selection,
    default_run_name,
    parse,
)
from experiment.dataset import DatasetError
from experiment.models import build_model
from experiment.recorder import Recorder
from experiment.task import Samples, compute_device, evaluate, test_data
from flower_app import fast_linkstate
from flower_app.checkpoint import (
    CLIENT_STATE,
    Checkpoint,
    check_clients,
    link_client_states,
    log_sizes,
    resume_point,
    run_rounds,
    save,
)
from flower_app.run_lock import held
from mods.state_mod import state_link
from strategies import BandwidthFedAvg, build_strategy
from strategies.accounting import dense_bytes
from strategies.discovery import DiscoveryError

MB = 1e6


def make_server_app(run_config: dict[str, Any] | None = None) -> ServerApp:
    """Build a ServerApp; `run_config` replaces Flower's (empty under `run_simulation`)."""
    fast_linkstate.install()  # where the simulation engine shares this process
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run_federation(grid, run_config or dict(context.run_config))
        except (ConfigError, DatasetError, DiscoveryError) as error:
            log(ERROR, "%s", error)
            raise SystemExit(2) from None

    return app


def run_federation(grid: Grid, flat_config: dict[str, Any]) -> Path:
    """Run one experiment over `grid` and return its run folder."""
    config = parse(flat_config)
    test = test_data(config).to(compute_device(config.device))  # fails if missing
    run_dir = Path(config.output_dir).resolve() / default_run_name(config)
    with held(run_dir):  # one command at a time writes a run folder
        checkpoint = resume_point(run_dir, config.to_flat()) if config.resume else None
        recorder = Recorder(run_dir, resume=config.resume)
        if not config.resume:
            recorder.write_config(config.to_flat() | {"run-dir": str(run_dir)})
        link = state_link(config.output_dir, grid.run.run_id)
        link_client_states(run_dir, link)
        try:
            return _train(grid, config, test, run_dir, recorder, checkpoint)
        finally:
            link.unlink(missing_ok=True)


def _train(
    grid: Grid,
    config: ExperimentConfig,
    test: Samples,
    run_dir: Path,
    recorder: Recorder,
    checkpoint: Checkpoint | None,
) -> Path:
    """Discover the clients, run (or resume) the rounds, write the summary."""
    model = build_model(config.model, config.seed)
    initial = ArrayRecord(model.state_dict())
    model_bytes = dense_bytes(initial)
    model.to(compute_device(config.device))  # for the central evaluation
    strategy = build_strategy(config, recorder)
    clients = strategy.discover_partitions(grid, logged=checkpoint is None)
    check_selection(config, clients)  # a deployment may have other nodes than expected
    _log_start(run_dir, config, clients, model_bytes, strategy.partition_sizes, len(test))
    rows: list[dict[str, Any]] = []
    done = 0
    if checkpoint is not None:
        check_clients(checkpoint, clients, run_dir)
        strategy.restore(checkpoint.strategy)
        initial = ArrayRecord({name: Array(value) for name, value in checkpoint.model.items()})
        rows, done = checkpoint.rows, checkpoint.server_round
        log(INFO, "resuming %s after round %d of %d", run_dir, done, config.num_server_rounds)

    def end_of_round(server_round: int, arrays: ArrayRecord) -> None:
        state = strategy.run_state()
        model_now = {name: array.numpy() for name, array in arrays.items()}
        sizes = log_sizes(run_dir)
        save(run_dir, Checkpoint(server_round, clients, model_now, state, rows, sizes))

    evaluate_fn = central_evaluation(model, test, strategy, config.num_server_rounds, rows)
    run_rounds(
        strategy,
        done,
        grid=grid,
        initial_arrays=initial,
        num_rounds=config.num_server_rounds,
        timeout=config.round_timeout_s,
        evaluate_fn=evaluate_fn,
        end_of_round=end_of_round,
    )
    _finish(run_dir, recorder, strategy, rows, model_bytes, grid.run.run_id)
    return run_dir


def _finish(
    run_dir: Path,
    recorder: Recorder,
    strategy: BandwidthFedAvg,
    rows: list[dict[str, Any]],
    model_bytes: int,
    flower_run_id: int,
) -> None:
    """summary.json, the bandwidth lines of the log, the plots; the clients' states go."""
    bandwidth = strategy.bandwidth_summary(model_bytes)
    recorder.finish(
        {
            "run_dir": str(run_dir),
            "flower_run_id": flower_run_id,  # `flwr ls --run-id` shows Flower's own figures
            "final_test_accuracy": rows[-1]["test_accuracy"],
            "final_test_loss": rows[-1]["test_loss"],
            "wall_s": round(sum(row["wall_s"] for row in rows), 3),
            "delivered_updates": sum(row["delivered"] for row in rows),
            "sim_time_s": rows[-1]["sim_time_s"],
            "bandwidth": bandwidth,
        }
    )
    _log_formula(bandwidth)
    from flower_app.plots import write_run_plots  # matplotlib: a second, at the end only

    write_run_plots(run_dir)
    shutil.rmtree(run_dir / CLIENT_STATE, ignore_errors=True)  # checkpoint.npz holds the model


def _log_start(
    run_dir: Path,
    config: ExperimentConfig,
    clients: int,
    model_bytes: int,
    sizes: tuple[int, ...],
    test_samples: int,
) -> None:
    log(
        INFO,
        "run folder: %s (%d clients, model %s: %.2f MB float32)",
        run_dir,
        clients,
        config.model,
        model_bytes / MB,
    )
    log(
        INFO,
        "partitions (%s): %d training samples, per client min %d, median %g, max %d; %d to test",
        config.partitioner,
        sum(sizes),
        min(sizes),
        float(np.median(sizes)),
        max(sizes),
        test_samples,
    )


def central_evaluation(
    model: torch.nn.Module,
    test: Samples,
    strategy: BandwidthFedAvg,
    num_rounds: int,
    rows: list[dict[str, Any]],
) -> Callable[[int, ArrayRecord], MetricRecord]:
    """Flower's `evaluate_fn`: test the global model, close the round's row (into `rows`)."""

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(model, test)
        row = strategy.finish_round(server_round, loss, accuracy)
        rows.append(row)
        simulated = "" if row["sim_time_s"] == "" else f" | simulated {row['sim_time_s']:.1f} s"
        log(
            INFO,
            "[round %d/%d] test acc %.4f loss %.4f | transport up %s down %s | cum %s | %.1f s%s",
            server_round,
            num_rounds,
            accuracy,
            loss,
            human_bytes(row["up_transport_bytes"]),
            human_bytes(row["down_transport_bytes"]),
            human_bytes(row["cum_transport_bytes"]),
            row["wall_s"],
            simulated,
        )
        return MetricRecord({"test-loss": loss, "test-accuracy": accuracy})

    return evaluate_fn


def human_bytes(count: float) -> str:
    """Bytes in decimal units: 950 B, 12.30 kB, 6.65 MB, 1.20 GB."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count:.0f} B"


def _log_formula(b: dict[str, Any]) -> None:
    sent = b["bytes"]
    log(
        INFO,
        "bandwidth sent (down + up): payload %s, content %s, message %s, transport %s",
        *(
            human_bytes(sent["down"][level]["sent"] + sent["up"][level]["sent"])
            for level in ("payload", "content", "message", "transport")
        ),
    )
    log(
        INFO,
        "bandwidth: formula (model down + update up) x clients x fraction x rounds = "
        "(%d + %d) x %d x %g x %d = %d B; the train phase used %d B of payload (%+d B: 0 for "
        "dense FedAvg when every client delivers; negative: compression, failed or dropped "
        "clients, rounding of clients x fraction)",
        b["model_bytes"],
        b["model_bytes"],
        b["clients"],
        b["fraction_train"],
        b["rounds"],
        b["formula_bytes"],
        b["train_payload_bytes"],
        b["payload_minus_formula_bytes"],
    )
    log(
        INFO,
        "bandwidth: over %d train messages Flower adds %d B of content framing (.npy headers, "
        "keys, config/metric records), %d B at the message level (its object tree) and %d B "
        "on its transport (HTTP requests: %s in all)",
        b["train_messages"],
        b["content_framing_bytes"],
        b["message_framing_bytes"],
        b["transport_framing_bytes"],
        human_bytes(b["train_transport_bytes"]),
    )


app = make_server_app()

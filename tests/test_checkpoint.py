"""Resuming a killed run: what is checked, and the logs cut back to the last checkpoint."""

from __future__ import annotations

import json
import pickle

import pytest
from flwr.app import ConfigRecord, RecordDict

from experiment.config import ConfigError, parse
from flower_app import checkpoint
from flower_app.preflight import preflight
from mods.state_mod import PartitionStates
from tests.support import random_model, run_round


@pytest.fixture
def killed_run(flat_config, tmp_path):
    """A run killed in round 3: two rounds checkpointed, half of round 3 in its logs."""
    run_dir = tmp_path / "test-run"  # the run-name of flat_config
    run_dir.mkdir()
    settings = parse(flat_config).to_flat()
    (run_dir / "run_config.json").write_text(json.dumps(settings | {"run-dir": str(run_dir)}))
    (run_dir / "bandwidth.csv").write_text("round,bytes\n1,10\n2,20\n")
    (run_dir / "rounds.csv").write_text("round\n0\n1\n2\n")
    sizes = checkpoint.log_sizes(run_dir)
    checkpoint.save(run_dir, checkpoint.Checkpoint(2, 10, {}, {"x": 1}, [{"round": 2}], sizes))
    with (run_dir / "bandwidth.csv").open("a") as log:
        log.write("3,30\n3,4")  # round 3's rows, the last one cut by the kill
    (run_dir / "segments.csv").write_text("round\n3\n")  # begun in round 3
    for server_round in (2, 3):
        states = PartitionStates(run_dir / checkpoint.CLIENT_STATE, 0)
        states.save(server_round, RecordDict({"c": ConfigRecord({"r": server_round})}))
    return run_dir, settings


def test_resuming_cuts_the_logs_and_client_states_back_to_the_checkpoint(killed_run):
    run_dir, settings = killed_run
    # Execute
    resumed = checkpoint.resume_point(run_dir, settings)
    # Assert: round 2's checkpoint; round 3's rows, its new log and its client states gone
    assert (resumed.server_round, resumed.strategy, resumed.rows) == (2, {"x": 1}, [{"round": 2}])
    assert (run_dir / "bandwidth.csv").read_text() == "round,bytes\n1,10\n2,20\n"
    assert (run_dir / "rounds.csv").read_text() == "round\n0\n1\n2\n"
    assert not (run_dir / "segments.csv").exists()
    assert PartitionStates(run_dir / checkpoint.CLIENT_STATE, 0).rounds() == [2]


def test_a_run_resumes_only_with_its_own_settings_and_unfinished(killed_run, tmp_path):
    run_dir, settings = killed_run
    with pytest.raises(ConfigError, match=r"ran with other settings \(lr, seed\); allowed: its"):
        checkpoint.resume_point(run_dir, settings | {"lr": 0.5, "seed": 1})
    # resume, run-dir and output-dir may differ (the folder may have moved)
    checkpoint.check_resumable(run_dir, settings | {"resume": True, "output-dir": "/elsewhere"})
    (run_dir / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="finished; nothing to resume"):
        checkpoint.check_resumable(run_dir, settings)
    with pytest.raises(ConfigError, match="holds no run to resume"):
        checkpoint.check_resumable(tmp_path / "nothing", settings)


def test_an_unreadable_checkpoint_is_one_line(killed_run):
    run_dir, settings = killed_run
    (run_dir / "checkpoint.pkl").write_bytes(b"\x80\x05 not a pickle")
    with pytest.raises(ConfigError, match=r"checkpoint.pkl cannot be read \(UnpicklingError"):
        checkpoint.resume_point(run_dir, settings)


def test_resume_overrides_are_the_runs_own_settings(killed_run):
    run_dir, settings = killed_run
    overrides = checkpoint.resume_overrides(run_dir)
    assert overrides == settings | {
        "resume": True,
        "run-name": "test-run",
        "output-dir": str(run_dir.parent),
    }


def test_a_run_resumes_with_the_clients_it_had(killed_run, flat_config):
    # Prepare: the killed run had 10 clients (its checkpoint)
    run_dir, _ = killed_run
    flat_config |= {"resume": True, "run-name": "test-run", "output-dir": str(run_dir.parent)}
    # Execute / Assert: 4 is one line before anything starts; 10 goes through
    with pytest.raises(ConfigError, match="had 10 clients, not 4; allowed: num-supernodes=10"):
        preflight(flat_config, num_supernodes=4)
    config, folder = preflight(flat_config, num_supernodes=10)
    assert (config.resume, folder) == (True, run_dir)


def test_a_strategy_state_after_a_round_pickles_and_restores(quant_strategy):
    # Prepare: a quantized downlink (the round's encoded model is cached on the strategy)
    strategy, grid = quant_strategy(**{"quant.down-bits": 8, "quant.error-feedback": True})
    steps = {pid: random_model(pid) for pid in range(4)}
    run_round(strategy, grid, {}, random_model(9), steps)
    # Execute: what a checkpoint holds, back into a strategy of a new process
    state = pickle.loads(pickle.dumps(strategy.run_state()))
    fresh, _ = quant_strategy(**{"quant.down-bits": 8, "quant.error-feedback": True})
    fresh.restore(state)
    # Assert: the run's byte totals came along; the round's caches did not
    assert fresh.ledger.run == strategy.ledger.run
    assert fresh.ledger.run.messages["up"] == 8  # 4 query replies, 4 updates
    assert "_down" not in state and "_decoded" not in state and "_global" not in state


def test_a_resumed_run_keeps_its_number_of_clients_unless_told(killed_run, tmp_path):
    run_dir, _ = killed_run  # checkpointed with 10 clients
    assert checkpoint.resume_clients(run_dir, None) == 10
    assert checkpoint.resume_clients(run_dir, 4) == 4  # then preflight says 4 is not 10
    assert checkpoint.resume_clients(None, None) == 20  # no --resume: the default
    assert checkpoint.resume_clients(tmp_path / "no-run", None) == 20  # no round finished

"""Resuming a killed run: what is checked, and the logs cut back to the last checkpoint."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from experiment.config import ConfigError, parse
from flower_app import checkpoint
from flower_app.preflight import preflight
from mods.state_mod import PartitionStates
from tests.support import random_model, run_round, wrapped_run


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
    (run_dir / "checkpoint.npz").write_bytes(b"\x80\x05 a pickle, say")
    with pytest.raises(
        ConfigError, match=r"checkpoint.npz cannot be read \(ValueError: This file contains pickled"
    ):
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


def test_a_strategy_state_after_a_round_is_saved_and_restored(quant_strategy, tmp_path):
    # Prepare: a quantized downlink (the round's encoded model is cached on the strategy)
    strategy, grid = quant_strategy(**{"quant.down-bits": 8, "quant.error-feedback": True})
    steps = {pid: random_model(pid) for pid in range(4)}
    run_round(strategy, grid, {}, random_model(9), steps)
    # Execute: what a checkpoint holds, back into a strategy of a new process
    saved = checkpoint.Checkpoint(1, 4, random_model(1), strategy.run_state(), [], {})
    checkpoint.save(tmp_path, saved)
    state = checkpoint.load(tmp_path).strategy
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


@pytest.mark.parametrize(
    "overrides",
    [
        {"strategy": "stc", "net.channel": "random-walk", "net.policy": "drop"},
        {"strategy": "fedadam", "uplink": "stc", "downlink": "stc"},
        {"strategy": "fedavgm", "aggregation.server-momentum": 0.9, "uplink": "randomk"},
        {"strategy": "qsfl", "net.channel": "rayleigh"},
        {"strategy": "quant", "quant.scheme": "progressive", "quant.refine-loss": 0.5},
    ],
)
def test_every_strategy_state_survives_a_checkpoint_without_pickle(
    flat_config, tmp_path, overrides
):
    # Prepare: one round of the real ClientApp (in process) under each kind of state
    flat_config.update({"fraction-train": 1.0, "num-server-rounds": 1} | overrides)
    wrapped, _, strategy = wrapped_run(flat_config, tmp_path / "run")
    # Execute
    state = strategy.run_state()
    checkpoint.save(tmp_path, checkpoint.Checkpoint(1, 4, wrapped, state, [{"a": 1}], {}))
    loaded = checkpoint.load(tmp_path)
    # Assert: the same tree came back: arrays equal, objects of the same classes and state
    assert loaded.model.keys() == wrapped.keys() and loaded.rows == [{"a": 1}]
    assert same_tree(loaded.strategy, state)
    assert not list(tmp_path.glob("*.pkl"))


def same_tree(a, b) -> bool:
    """Deep equality of checkpointed trees (arrays by value, objects by class and state)."""
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b, True)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_tree(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(same_tree, a, b))
    if isinstance(a, np.random.Generator):
        return a.bit_generator.state == b.bit_generator.state
    if hasattr(a, "__dict__") and not isinstance(a, type):
        return type(a) is type(b) and same_tree(vars(a), vars(b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def test_a_damaged_checkpoint_is_one_line_or_a_valid_checkpoint(tmp_path):
    # Prepare: a checkpoint with a model, a state of several kinds and rows
    state = {"deltas": {1: np.arange(5.0)}, "synced": {0: 1}, "seen": {2, 3}, "t": (1, "a")}
    saved = checkpoint.Checkpoint(2, 4, random_model(3), state, [{"round": 1}], {"a.csv": 9})
    checkpoint.save(tmp_path, saved)
    original = (tmp_path / "checkpoint.npz").read_bytes()
    rng = np.random.default_rng(0)
    outcomes = {"refused": 0, "read": 0}
    for _ in range(3000):
        damaged = bytearray(original)
        for position in rng.integers(len(damaged), size=rng.integers(1, 5)):
            damaged[position] = rng.integers(256)
        (tmp_path / "checkpoint.npz").write_bytes(bytes(damaged))
        # Execute
        try:
            loaded = checkpoint.load(tmp_path)
        except ConfigError as error:
            assert "\n" not in str(error) and "cannot be read" in str(error)
            outcomes["refused"] += 1
            continue
        # Assert: whatever reads is a checkpoint of the right kinds
        assert isinstance(loaded.server_round, int) and isinstance(loaded.model, dict)
        outcomes["read"] += 1
    assert outcomes["refused"] > 2000


def test_a_checkpoint_naming_a_foreign_class_is_refused(tmp_path):
    saved = checkpoint.Checkpoint(1, 4, {}, {}, [], {})
    checkpoint.save(tmp_path, saved)
    stored = dict(np.load(tmp_path / "checkpoint.npz"))
    tree = (
        stored["__tree__"]
        .tobytes()
        .replace(b'"k": "dict", "v": []', b'"k": "function", "v": "os:system"', 1)
    )
    stored["__tree__"] = np.frombuffer(tree, np.uint8)
    np.savez(tmp_path / "checkpoint.npz", **stored)
    with pytest.raises(ConfigError, match="names 'os:system', which this app does not trust"):
        checkpoint.load(tmp_path)


def test_a_log_shorter_than_its_checkpoint_says_is_not_resumed(killed_run):
    run_dir, settings = killed_run
    rounds = run_dir / "rounds.csv"
    rounds.write_bytes(rounds.read_bytes()[:10])
    with pytest.raises(ConfigError, match="fewer than the .* the checkpoint recorded"):
        checkpoint.resume_point(run_dir, settings)


def test_what_was_shared_before_a_checkpoint_is_shared_after(tmp_path):
    # two links drawing from one generator, a list holding itself: as pickle keeps them
    generator = np.random.default_rng(5)
    loop: list = []
    loop.append(loop)
    state = {"links": [{"rng": generator}, {"rng": generator}], "loop": loop}
    checkpoint.save(tmp_path, checkpoint.Checkpoint(1, 4, {}, state, [], {}))
    loaded = checkpoint.load(tmp_path).strategy
    first, second = (link["rng"] for link in loaded["links"])
    assert first is second and loaded["loop"][0] is loaded["loop"]
    # the loaded generator goes on where the saved one was: draws alternate between the two
    # names of the one generator as they would before
    assert [first.random(), second.random()] == [generator.random(), generator.random()]

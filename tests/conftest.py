"""Shared fixtures: a valid flat run-config on the synthetic dataset, no waiting for nodes, a
task identity for hand-built messages, a quant strategy on a fake grid."""

from __future__ import annotations

import pytest
from flwr.supercore.task_identity import TaskIdentity

from experiment.config import parse, resolve
from experiment.recorder import Recorder
from strategies import QuantFedAvg, discovery
from tests.support import FakeGrid


@pytest.fixture(autouse=True)
def no_node_polling_delay(monkeypatch):
    """Hand-built grids know their nodes at once: poll them without sleeping."""
    monkeypatch.setattr(discovery, "NODE_POLL_S", 0.0)


@pytest.fixture
def flat_config(tmp_path):
    """Pyproject defaults on the synthetic dataset, logs under tmp_path.

    Messages in Flower's layout: these tests build replies by hand and computed their sizes
    by hand in that layout; the compact layout has tests of its own (test_wire.py) and is
    what every end-to-end run sends.
    """
    return resolve(
        {
            "wire.layout": "flower",
            "dataset": "synthetic",
            "model": "logistic",
            "num-server-rounds": 2,
            "fraction-train": 0.5,
            "output-dir": str(tmp_path / "outputs"),
            "run-name": "test-run",
        }
    )


@pytest.fixture(autouse=True)
def task_identity():
    """Messages need a run id; Flower sets it in a real ServerApp or ClientApp process."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = None


@pytest.fixture
def quant_strategy(flat_config, tmp_path):
    """Build quant strategies (run-config overrides as keywords) on a 4-node fake grid."""
    built = []

    def build(**overrides) -> tuple[QuantFedAvg, FakeGrid]:
        flat_config.update({"strategy": "quant", "fraction-train": 1.0} | overrides)
        strategy = QuantFedAvg(parse(flat_config), Recorder(tmp_path / f"run-{len(built)}"))
        built.append(strategy)
        grid = FakeGrid(4)
        strategy.discover_partitions(grid)
        return strategy, grid

    return build

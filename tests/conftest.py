"""Shared fixtures: a valid flat run-config on the synthetic dataset; no waiting for nodes."""

from __future__ import annotations

import pytest

from experiment.config import resolve
from strategies import discovery


@pytest.fixture(autouse=True)
def no_node_polling_delay(monkeypatch):
    """Hand-built grids know their nodes at once: poll them without sleeping."""
    monkeypatch.setattr(discovery, "NODE_POLL_S", 0.0)


@pytest.fixture
def flat_config(tmp_path):
    """Pyproject defaults on the synthetic dataset, logs under tmp_path."""
    return resolve(
        {
            "dataset": "synthetic",
            "model": "logistic",
            "num-server-rounds": 2,
            "fraction-train": 0.5,
            "output-dir": str(tmp_path / "outputs"),
            "run-name": "test-run",
        }
    )

"""Shared fixtures: a valid flat run-config on the synthetic dataset."""

from __future__ import annotations

import pytest

from flower_app.config import resolve


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

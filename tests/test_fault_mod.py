"""The fault-injecting client mod (faults.*) on hand-built messages."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from mods.fault_mod import make_fault_mod
from protocol import keys
from tests.support import random_model, record, train_message, trainer


def run(flat_config, partition_id: int, server_round: int = 1, **faults):
    flat_config.update({f"faults.{key.replace('_', '-')}": value for key, value in faults.items()})
    config = ConfigRecord({keys.SERVER_ROUND: server_round})
    msg = train_message(RecordDict({keys.ARRAYS: record(random_model(0)), keys.CONFIG: config}))
    context = Context(
        1, 1, {keys.PARTITION_ID: partition_id, keys.NUM_PARTITIONS: 4}, RecordDict(), {}
    )
    reply = make_fault_mod(flat_config)(msg, context, trainer(random_model(1), []))
    return {name: array.numpy() for name, array in reply.content[keys.ARRAYS].items()}


def honest(flat_config) -> dict[str, np.ndarray]:
    return run(dict(flat_config), 1)


def test_only_the_chosen_clients_misbehave(flat_config):
    clean = honest(flat_config)
    other = run(dict(flat_config), 1, kind="nan", clients="0,3")
    assert all(np.array_equal(other[name], clean[name]) for name in clean)
    chosen = run(dict(flat_config), 3, kind="nan", clients="0,3")
    assert all(np.isnan(value).all() for value in chosen.values())


@pytest.mark.parametrize("kind", ["huge", "garbage", "truncate", "dtype"])
def test_each_kind_corrupts_as_documented(flat_config, kind):
    clean = honest(flat_config)
    bad = run(dict(flat_config), 0, kind=kind, clients="0", scale=1000.0)
    for name, value in clean.items():
        if kind == "huge":
            np.testing.assert_allclose(bad[name], value * 1000.0, rtol=1e-6)
        elif kind == "dtype":
            assert bad[name].dtype == np.float64
            np.testing.assert_array_equal(bad[name], value)
        elif kind == "garbage":
            assert bad[name].dtype == value.dtype and bad[name].shape == value.shape
            assert not np.array_equal(bad[name], value)
        else:
            assert bad[name].shape == (value.size // 2,)


def test_fail_raises_and_the_rate_is_a_seeded_draw(flat_config):
    with pytest.raises(RuntimeError, match="injected fault: partition 0 fails"):
        run(dict(flat_config), 0, kind="fail", clients="0")
    # rate 0.5: some rounds misbehave, the same ones every time
    hit = [
        np.isnan(run(dict(flat_config), 0, r, kind="nan", clients="0", rate=0.5)["b"]).all()
        for r in range(1, 21)
    ]
    again = [
        np.isnan(run(dict(flat_config), 0, r, kind="nan", clients="0", rate=0.5)["b"]).all()
        for r in range(1, 21)
    ]
    assert hit == again and 0 < sum(hit) < 20


def test_faults_rounds_limits_the_fault_to_those_rounds(flat_config):
    hit = [
        np.isnan(run(dict(flat_config), 0, r, kind="nan", clients="0", rounds="2,4")["b"]).all()
        for r in range(1, 6)
    ]
    assert hit == [False, True, False, True, False]

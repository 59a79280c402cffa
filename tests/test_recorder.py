"""The recorder appends and flushes: a run stopped mid-way leaves complete rows."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from experiment.recorder import BANDWIDTH_COLUMNS, ROUND_COLUMNS, Recorder
from flower_app.simulation import finished_run


def message_row(server_round: int) -> dict:
    return {column: "" for column in BANDWIDTH_COLUMNS} | {
        "round": server_round,
        "partition_id": 3,
        "phase": "train",
        "direction": "up",
        "transport_bytes": 1000 + server_round,
        "status": "delivered",
    }


def round_row(server_round: int) -> dict:
    return {column: "" for column in ROUND_COLUMNS} | {
        "round": server_round,
        "cum_transport_bytes": 10 * server_round,
        "test_accuracy": 0.5,
    }


def test_stopped_run_leaves_complete_rows(tmp_path):
    # Prepare: 3 finished rounds, a 4th half-way (a message logged, no round row), no finish()
    recorder = Recorder(tmp_path / "run")
    recorder.write_config({"seed": 1})
    for server_round in (1, 2, 3):
        recorder.log_message(message_row(server_round))
        recorder.log_round(round_row(server_round))
    recorder.log_message(message_row(4))
    # Execute: read while the recorder is still open, as after a kill
    rounds = pd.read_csv(tmp_path / "run" / "rounds.csv")
    messages = pd.read_csv(tmp_path / "run" / "bandwidth.csv")
    # Assert
    assert rounds["round"].tolist() == [1, 2, 3]
    assert rounds["cum_transport_bytes"].tolist() == [10, 20, 30]
    assert messages["transport_bytes"].tolist()[:3] == [1001, 1002, 1003]
    assert list(messages.columns) == list(BANDWIDTH_COLUMNS)
    assert json.loads((tmp_path / "run" / "run_config.json").read_text()) == {"seed": 1}
    assert not (tmp_path / "run" / "summary.json").exists()


def test_finish_writes_summary(tmp_path):
    recorder = Recorder(tmp_path / "run")
    recorder.log_round(round_row(1))
    recorder.finish({"final_test_accuracy": 0.5})
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary == {"final_test_accuracy": 0.5}


def test_refuses_to_mix_two_runs(tmp_path):
    Recorder(tmp_path / "run")
    with pytest.raises(FileExistsError, match="already holds a run"):
        Recorder(tmp_path / "run")


def test_unknown_column_is_an_error(tmp_path):
    recorder = Recorder(tmp_path / "run")
    with pytest.raises(ValueError):
        recorder.log_message(message_row(1) | {"bytes": 3})


def test_summary_is_strict_json_with_null_for_nan_and_inf(tmp_path):
    recorder = Recorder(tmp_path / "run")
    recorder.finish({"final_test_loss": float("nan"), "bandwidth": {"x": [float("inf"), 1.5]}})
    text = (tmp_path / "run" / "summary.json").read_text()
    assert json.loads(text, parse_constant=pytest.fail) == {
        "final_test_loss": None,
        "bandwidth": {"x": [None, 1.5]},
    }


@pytest.mark.parametrize(("delivered", "error"), [(3, None), (0, "no round delivered an update")])
def test_a_finished_run_must_have_trained(tmp_path, delivered, error):
    (tmp_path / "summary.json").write_text(json.dumps({"delivered_updates": delivered}))
    if error is None:
        assert finished_run(tmp_path) == tmp_path
    else:
        with pytest.raises(RuntimeError, match=error):
            finished_run(tmp_path)
    with pytest.raises(RuntimeError, match="the run did not finish"):
        finished_run(tmp_path / "missing")

"""The report command on hand-made run folders."""

from __future__ import annotations

import pandas as pd

from experiment.recorder import BANDWIDTH_COLUMNS
from flower_app.report import main, summarize
from tests.support import rounds_table

# uplink updates: 8000 dense bytes each, 450 payload, 500 content, 600 message and 1000
# transport bytes; one failed, one dropped
UPDATE = {"codec": "stc", "payload_bits": 3600, "content_bytes": 500, "message_bytes": 600}
UPDATE |= {"transport_bytes": 1000, "requests": 9, "dense_bytes": 8000}
MESSAGES = [
    {
        "round": 1,
        "partition_id": 0,
        **UPDATE,
        "status": "delivered",
        "sim_start_s": 5.0,
        "sim_end_s": 20.0,
    },
    {
        "round": 1,
        "partition_id": 1,
        **UPDATE,
        "status": "delivered",
        "sim_start_s": 5.0,
        "sim_end_s": 30.0,
    },
    {
        "round": 2,
        "partition_id": 0,
        **UPDATE,
        "status": "delivered",
        "sim_start_s": 35.0,
        "sim_end_s": 50.0,
    },
    {"round": 2, "partition_id": 1, "transport_bytes": 2000, "status": "failed"},
    {
        "round": 3,
        "partition_id": 0,
        **UPDATE,
        "status": "dropped",
        "sim_start_s": 60.0,
        "sim_end_s": 90.0,
    },
]
MESSAGES = [{"phase": "train", "direction": "up"} | row for row in MESSAGES]
MESSAGES.append(
    {
        "round": 3,
        "partition_id": 1,
        "phase": "train",
        "direction": "down",
        "codec": "float32",
        "payload_bits": 64000,
        "content_bytes": 8300,
        "transport_bytes": 20000,
        "dense_bytes": 8000,
        "status": "delivered",
    }
)


def make_run(folder, with_network: bool = True):
    folder.mkdir()
    rounds_table(with_network).to_csv(folder / "rounds.csv", index=False)
    messages = pd.DataFrame(MESSAGES).reindex(columns=list(BANDWIDTH_COLUMNS))
    messages.fillna({"unused_payload_bits": 0}).to_csv(folder / "bandwidth.csv", index=False)
    return folder


def test_summary_of_a_hand_made_run(tmp_path):
    summary = summarize(make_run(tmp_path / "run"), target_accuracy=0.7)
    assert summary["rounds"] == 3
    assert (summary["final_accuracy"], summary["best_accuracy"]) == (0.70, 0.72)
    assert (summary["up_bytes"], summary["down_bytes"], summary["total_bytes"]) == (
        3100,
        12000,
        15100,
    )
    assert summary["total_content_bytes"] == 15100 // 2
    # 4 updates sent (the failed one is not): 32,000 dense bytes in 1,800 payload, 2,000
    # content, 2,400 message and 4,000 transport bytes
    assert summary["uplink_compression_payload"] == 32000 / 1800
    assert summary["uplink_compression_content"] == 16.0
    assert summary["uplink_compression_message"] == 32000 / 2400
    assert summary["uplink_compression_transport"] == 8.0
    assert summary["updates_by_status"] == {"delivered": 3, "dropped": 1}
    assert summary["sim_time_s"] == 80.0
    # 0.72 >= 0.7 first in round 2
    assert summary["to_target_round"] == 2
    assert summary["to_target_up_bytes"] == 2100
    assert summary["to_target_total_bytes"] == 10100
    assert summary["to_target_sim_time_s"] == 55.5


def test_a_target_never_reached_and_no_network(tmp_path):
    summary = summarize(make_run(tmp_path / "run", with_network=False), target_accuracy=0.9)
    assert summary["sim_time_s"] is None
    assert summary["to_target_round"] is None
    assert summary["to_target_sim_time_s"] is None


def test_report_prints_and_writes_plots(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert main([str(run), "--target-accuracy", "0.7"]) == 0
    out = capsys.readouterr().out
    assert "total_bytes: 15,100 B (0.02 MB)" in out
    assert "to_target_round: 2" in out
    for name in ("accuracy_vs_bytes.png", "bytes_per_round.png", "accuracy_vs_time.png"):
        assert (run / name).stat().st_size > 0
        assert f"plot: {run / name}" in out


def test_report_on_a_folder_without_logs(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert f"error: '{tmp_path}' is not a run folder: no rounds.csv, bandwidth.csv" in (
        capsys.readouterr().err
    )

"""The report command on hand-made run folders."""

from __future__ import annotations

import re

from flower_app.recorder import BANDWIDTH_COLUMNS, ROUND_COLUMNS
from flower_app.report import main, summarize

# round, ..., test_accuracy, sim_time_s, wall_s (in recorder.ROUND_COLUMNS order)
ROWS = [
    "0,0,0,100,0,100,0,100,,2.3,0.10,{0.0},1.0",
    "1,2,2,1000,4000,1100,4000,5100,1.0,1.5,0.55,{30.0},1.0",
    "2,2,1,1000,4000,2100,8000,10100,0.8,1.0,0.72,{55.5},1.0",
    "3,2,2,1000,4000,3100,12000,15100,0.6,0.9,0.70,{80.0},1.0",
]
ROUNDS = "\n".join([",".join(ROUND_COLUMNS), *(r.replace("{", "").replace("}", "") for r in ROWS)])
IDEAL_ROUNDS = "\n".join([",".join(ROUND_COLUMNS), *(re.sub(r"\{.*\}", "", r) for r in ROWS)])
HEADER = ",".join(BANDWIDTH_COLUMNS)
# uplink updates: 8000 dense bytes each sent in 500 wire bytes; one failed, one dropped
MESSAGES = [
    HEADER,
    "1,0,train,up,stc,3600,500,466,8000,delivered,5.0,20.0",
    "1,1,train,up,stc,3600,500,466,8000,delivered,5.0,30.0",
    "2,0,train,up,stc,3600,500,466,8000,delivered,35.0,50.0",
    "2,1,train,up,,0,0,,0,failed,,",
    "3,0,train,up,stc,3600,500,466,8000,dropped,60.0,90.0",
    "3,1,train,down,float32,64000,8300,8300,8000,delivered,55.5,57.0",
]


def make_run(folder, rounds=ROUNDS):
    folder.mkdir()
    (folder / "rounds.csv").write_text(rounds + "\n")
    (folder / "bandwidth.csv").write_text("\n".join(MESSAGES) + "\n")
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
    # 4 updates sent (the failed one is not): 32,000 dense bytes in 2,000 wire bytes
    assert summary["uplink_compression"] == 16.0
    assert summary["updates_by_status"] == {"delivered": 3, "dropped": 1}
    assert summary["sim_time_s"] == 80.0
    # 0.72 >= 0.7 first in round 2
    assert summary["to_target_round"] == 2
    assert summary["to_target_up_bytes"] == 2100
    assert summary["to_target_total_bytes"] == 10100
    assert summary["to_target_sim_time_s"] == 55.5


def test_a_target_never_reached_and_no_network(tmp_path):
    summary = summarize(make_run(tmp_path / "run", IDEAL_ROUNDS), target_accuracy=0.9)
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

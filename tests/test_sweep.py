"""The sweep file parser and the comparison table, without running Flower."""

from __future__ import annotations

import contextlib
import json
import math

import pytest

from experiment.config import ConfigError, parse, resolve
from experiment.recorder import BANDWIDTH_COLUMNS
from flower_app import checkpoint, simulation
from flower_app.run_lock import RunFolderBusy, check_free, held
from flower_app.sweep import (
    baseline_runs,
    compare,
    load_sweep,
    run_sweep,
    to_markdown,
    write_comparison,
)
from tests.support import rounds_table

SWEEP = """
[sweep]
name = "small"
num-supernodes = 4
seeds = [1, 2]
target-accuracy = 0.7
output-dir = "{out}"

[common]
dataset = "synthetic"
model = "logistic"
net.channel = "random-walk"

[[runs]]
name = "fedavg"
strategy = "fedavg"

[[runs]]
name = "stc"
strategy = "stc"
stc = {{ p-up = 0.1 }}
"""


def write(tmp_path, text):
    path = tmp_path / "sweep.toml"
    path.write_text(text.format(out=tmp_path / "out"))
    return path


def test_a_sweep_file_becomes_one_job_per_run_and_seed(tmp_path):
    sweep = load_sweep(write(tmp_path, SWEEP))
    assert sweep.folder == (tmp_path / "out" / "small").resolve()
    jobs = sweep.jobs()
    assert [(name, seed) for name, seed, _ in jobs] == [
        ("fedavg", 1),
        ("fedavg", 2),
        ("stc", 1),
        ("stc", 2),
    ]
    name, seed, overrides = jobs[3]
    assert overrides == {
        "dataset": "synthetic",
        "model": "logistic",
        "net.channel": "random-walk",
        "strategy": "stc",
        "stc.p-up": 0.1,
        "seed": 2,
        "output-dir": str(sweep.folder),
        "run-name": "stc-seed2",
    }


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("[sweep]", "[sweeps]"), "unknown table(s) sweeps"),
        (lambda t: t + "\n[oops\n", "is not valid TOML"),
        (lambda t: t.replace('name = "small"\n', ""), "[sweep]: missing key(s) name"),
        (lambda t: t.replace("num-supernodes = 4", "clients = 4"), "unknown key(s) clients"),
        (lambda t: t.replace("seeds = [1, 2]", "seeds = 3"), "seeds=3 must be a list"),
        (lambda t: t.replace("seeds = [1, 2]", "seeds = [-1]"), "seeds=[-1]; allowed"),
        (lambda t: t.replace("target-accuracy = 0.7", "target-accuracy = 2.0"), "(0, 1]"),
        (lambda t: t.split("[[runs]]")[0], "has no [[runs]]"),
        (lambda t: t.replace('name = "stc"', 'name = "fedavg"'), "'fedavg' is used twice"),
        (lambda t: t.replace('name = "stc"\n', ""), "run 2: name=None; give each run a name"),
        (lambda t: t + "seed = 5\n", "run 2 ('stc'): seed are set by the sweep"),
        (
            lambda t: t.replace("p-up = 0.1", "p-up = 1.5"),
            "run 'stc' (seed 1): stc.p-up=1.5 is out of range; allowed: (0, 1]",
        ),
        (lambda t: t + "lrr = 0.1\n", "run 'stc' (seed 1): unknown run-config key 'lrr'"),
    ],
)
def test_a_bad_sweep_file_is_one_clear_error(tmp_path, edit, message):
    with pytest.raises(ConfigError) as error:
        load_sweep(write(tmp_path, edit(SWEEP)))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_a_missing_sweep_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_sweep(tmp_path / "nope.toml")


def make_run(folder, accuracy_scale=1.0, byte_scale=1):
    """A hand-made run: test_report's rounds, accuracies and bytes scaled."""
    folder.mkdir(parents=True)
    rounds = rounds_table()
    byte_columns = [column for column in rounds.columns if column.endswith("_bytes")]
    rounds[byte_columns] = rounds[byte_columns] // byte_scale
    rounds["test_accuracy"] = (rounds["test_accuracy"] * accuracy_scale).round(6)
    rounds.to_csv(folder / "rounds.csv", index=False)
    (folder / "bandwidth.csv").write_text(",".join(BANDWIDTH_COLUMNS) + "\n")
    return folder


def test_comparison_of_two_small_hand_made_runs(tmp_path):
    # Prepare: "dense" over two seeds; "sparse" with 10x fewer bytes and lower accuracy.
    # Accuracies per round 0.10, 0.55, 0.72, 0.70; cum bytes up 3100, total 15100.
    runs = {
        "dense": [make_run(tmp_path / "d1"), make_run(tmp_path / "d2", accuracy_scale=0.9)],
        "sparse": [make_run(tmp_path / "s1", accuracy_scale=0.95, byte_scale=10)],
    }
    # Execute
    table = compare(
        runs, target_accuracy=0.68, baselines={"dense": "dense", "sparse": "dense"}
    ).set_index("run")
    # Assert: dense seeds end at 0.70 and 0.63 -> mean 0.665, spread 0.035
    assert table.loc["dense", "final_accuracy"] == pytest.approx(0.665)
    assert table.loc["dense", "final_accuracy_std"] == pytest.approx(0.035)
    # 0.68 is reached by seed 1 in round 2 (0.72) but never by seed 2 (best 0.648)
    assert table.loc["dense", "reached_target"] == "1/2"
    assert math.isnan(table.loc["dense", "rounds_to_target"])
    # sparse: 0.72 x 0.95 = 0.684 in round 2, at 2100 // 10 = 210 uplink bytes
    assert table.loc["sparse", "reached_target"] == "1/1"
    assert table.loc["sparse", "rounds_to_target"] == 2
    assert table.loc["sparse", "up_bytes_to_target"] == 210
    assert table.loc["sparse", "sim_time_to_target_s"] == 55.5
    # bytes: 3100 // 10 = 310 up, 15100 // 10 = 1510 total
    assert table.loc["sparse", "up_x_fewer"] == pytest.approx(3100 / 310)
    assert table.loc["sparse", "total_x_fewer"] == pytest.approx(15100 / 1510)
    assert table.loc["dense", "up_x_fewer"] == 1.0


def test_comparison_files_and_plots(tmp_path):
    runs = {"dense": [make_run(tmp_path / "d1")], "sparse": [make_run(tmp_path / "s1", 1, 10)]}
    table = compare(runs, target_accuracy=0.7, baselines={"sparse": "dense"})
    written = write_comparison(tmp_path / "sweep", table, runs, failed=["broken-seed1"])
    names = {path.name for path in written}
    assert {"comparison.csv", "comparison.md", "accuracy_vs_uplink.png"} <= names
    assert {"accuracy_vs_total.png", "accuracy_vs_sim_time.png", "bytes_per_round.png"} <= names
    markdown = (tmp_path / "sweep" / "comparison.md").read_text()
    assert markdown.startswith("| run | seeds | final_accuracy |")
    assert "| sparse | 1 | 0.7 |" in markdown
    assert "Failed runs (left out): broken-seed1" in markdown
    assert to_markdown(table).count("\n") == 4  # header, rule, two rows


def finish(folder, sweep, name: str, seed: int, **changes) -> None:
    """The run_config.json and summary.json the sweep's job would have written (changed)."""
    (overrides,) = [o for n, s, o in sweep.jobs() if (n, s) == (name, seed)]
    flat = parse(resolve(overrides)).to_flat() | changes
    (folder / "run_config.json").write_text(json.dumps(flat | {"run-dir": str(folder)}))
    summary = {"bandwidth": {"clients": changes.get("num-supernodes", sweep.clients[name])}}
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.mark.parametrize(
    ("changes", "message"), [({"lr": 0.5}, "(lr)"), ({"num-supernodes": 3}, "(num-supernodes)")]
)
def test_a_finished_run_with_other_settings_runs_again(
    tmp_path, monkeypatch, capsys, changes, message
):
    # Prepare: seed 1 of fedavg ran with another lr (or number of clients) than the file's now
    sweep = load_sweep(write(tmp_path, SWEEP))
    for name, seed in (("fedavg", 2), ("stc", 1), ("stc", 2)):
        finish(make_run(sweep.folder / f"{name}-seed{seed}"), sweep, name, seed)
    finish(make_run(sweep.folder / "fedavg-seed1"), sweep, "fedavg", 1, **changes)
    calls = []

    def fake_run(overrides, num_supernodes):
        calls.append(overrides["run-name"])
        return make_run(sweep.folder / overrides["run-name"])

    monkeypatch.setattr(simulation, "run_experiment", fake_run)
    # Execute
    run_sweep(sweep)
    # Assert: that run alone runs again, and the sweep says why
    assert calls == ["fedavg-seed1"]
    out = capsys.readouterr().out
    assert f"fedavg-seed1 ran with other settings {message}: run again" in out
    assert out.count("is already finished: reused") == 3


def test_a_failed_run_is_reported_and_the_sweep_goes_on(tmp_path, monkeypatch, capsys):
    # Prepare: the fedavg runs "train" (a hand-made folder), stc raises; fedavg seed 1 was
    # already finished by an earlier, stopped sweep
    sweep = load_sweep(write(tmp_path, SWEEP))
    finish(make_run(sweep.folder / "fedavg-seed1"), sweep, "fedavg", 1)
    make_run(sweep.folder / "fedavg-seed2")  # stopped before its summary: run again
    calls = []

    def fake_run(overrides, num_supernodes):
        calls.append(overrides["run-name"])
        if overrides["strategy"] == "stc":
            raise KeyError(1)  # an error whose message alone says nothing
        return make_run(sweep.folder / overrides["run-name"], accuracy_scale=0.9)

    monkeypatch.setattr(simulation, "run_experiment", fake_run)
    # Execute
    table = run_sweep(sweep)
    # Assert
    assert calls == ["fedavg-seed2", "stc-seed1", "stc-seed2"]
    assert table["run"].tolist() == ["fedavg"]
    assert table.loc[0, "seeds"] == 2
    out = capsys.readouterr().out
    assert "run 3/4: stc seed 1" in out
    trace = sweep.folder / "stc-seed1" / "failure.log"
    assert f"run stc seed 1 FAILED: KeyError: 1 (traceback: {trace})" in out
    assert "Traceback" in trace.read_text() and "raise KeyError(1)" in trace.read_text()
    assert "fedavg-seed1 is already finished: reused" in out
    assert "fedavg-seed2 did not finish: run again" in out
    markdown = (sweep.folder / "comparison.md").read_text()
    assert "Failed runs (left out): stc-seed1, stc-seed2" in markdown


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        ("corrupt", "checkpoint.npz cannot be read"),
        ("locked", "is in use by another command (pid"),
    ],
)
def test_a_run_folder_in_use_or_with_an_unreadable_checkpoint_is_left_alone(
    tmp_path, monkeypatch, capsys, damage, said
):
    # Prepare: fedavg seed 1 did not finish; its checkpoint is damaged, or another command
    # (this test) holds its lock; the other runs finished
    sweep = load_sweep(write(tmp_path, SWEEP))
    for name, seed in (("fedavg", 2), ("stc", 1), ("stc", 2)):
        finish(make_run(sweep.folder / f"{name}-seed{seed}"), sweep, name, seed)
    unfinished = make_run(sweep.folder / "fedavg-seed1")
    checkpoint.save(unfinished, checkpoint.Checkpoint(3, 4, {}, {}, [], {}))
    if damage == "corrupt":
        (unfinished / "checkpoint.npz").write_bytes(b"\x80\x04garbage")
    calls = []
    monkeypatch.setattr(simulation, "run_experiment", lambda o, n: calls.append(o))
    # Execute
    with held(unfinished) if damage == "locked" else contextlib.nullcontext():
        run_sweep(sweep)
    # Assert: not rerun, not deleted, reported
    assert calls == [] and (unfinished / "rounds.csv").is_file()
    out = capsys.readouterr().out
    assert "fedavg-seed1" in out and said in out and "left alone" in out


def test_a_second_command_on_a_held_run_folder_is_one_line(tmp_path):
    with held(tmp_path / "run"):
        with pytest.raises(RunFolderBusy, match=f"^{tmp_path / 'run'} is in use by another"):
            check_free(tmp_path / "run")
        with pytest.raises(RunFolderBusy), held(tmp_path / "run"):
            pass
    check_free(tmp_path / "run")  # released


@pytest.mark.parametrize(
    ("changes", "clients", "said", "resumed"),
    [
        ({}, 4, "resumed after round 3", True),
        ({"lr": 0.5}, 4, "run again", False),
        ({}, 3, "run again", False),
    ],
)
def test_an_unfinished_run_with_a_checkpoint_is_resumed(
    tmp_path, monkeypatch, capsys, changes, clients, said, resumed
):
    # Prepare: fedavg seed 1 was killed after round 3 (its checkpoint), with the sweep's
    # settings, with another lr, or with 3 clients instead of 4; the other runs finished
    sweep = load_sweep(write(tmp_path, SWEEP))
    for name, seed in (("fedavg", 2), ("stc", 1), ("stc", 2)):
        finish(make_run(sweep.folder / f"{name}-seed{seed}"), sweep, name, seed)
    killed = make_run(sweep.folder / "fedavg-seed1")
    finish(killed, sweep, "fedavg", 1, **changes)
    (killed / "summary.json").unlink()
    checkpoint.save(killed, checkpoint.Checkpoint(3, clients, {}, {}, [], {}))
    calls = []

    def fake_run(overrides, num_supernodes):
        calls.append((overrides["run-name"], overrides.get("resume", False)))
        return make_run(sweep.folder / overrides["run-name"]) if not resumed else killed

    monkeypatch.setattr(simulation, "run_experiment", fake_run)
    # Execute
    run_sweep(sweep)
    # Assert
    assert calls == [("fedavg-seed1", resumed)]
    assert f"fedavg-seed1 did not finish: {said}" in capsys.readouterr().out


def test_runs_may_set_their_number_of_clients_and_compare_with_fedavg_of_as_many(tmp_path):
    # Prepare: FedAvg and QSFL at 10 and at 20 clients; the sweep's default is 5
    path = tmp_path / "clients.toml"
    path.write_text(
        f"""
[sweep]
name = "clients"
num-supernodes = 5
seeds = [1]
target-accuracy = 0.5
output-dir = "{tmp_path / "out"}"

[common]
dataset = "synthetic"

[[runs]]
name = "fedavg-10"
num-supernodes = 10

[[runs]]
name = "qsfl-10"
strategy = "qsfl"
num-supernodes = 10

[[runs]]
name = "fedavg-20"
num-supernodes = 20

[[runs]]
name = "qsfl-20"
strategy = "qsfl"
num-supernodes = 20

[[runs]]
name = "qsfl-5"
strategy = "qsfl"
"""
    )
    # Execute
    sweep = load_sweep(path)
    # Assert
    assert sweep.clients == {
        "fedavg-10": 10,
        "qsfl-10": 10,
        "fedavg-20": 20,
        "qsfl-20": 20,
        "qsfl-5": 5,
    }
    assert "num-supernodes" not in sweep.runs["qsfl-10"]
    assert baseline_runs(sweep) == {
        "fedavg-10": "fedavg-10",
        "qsfl-10": "fedavg-10",
        "fedavg-20": "fedavg-20",
        "qsfl-20": "fedavg-20",
    }


def test_a_bad_number_of_clients_names_the_run(tmp_path):
    text = SWEEP.replace('name = "stc"', 'name = "stc"\nnum-supernodes = 0')
    with pytest.raises(ConfigError, match=r"run 2 \('stc'\): num-supernodes=0; allowed: >= 1"):
        load_sweep(write(tmp_path, text))

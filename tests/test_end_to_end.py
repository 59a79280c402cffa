"""End to end: real `flwr run`s and the run_simulation API, on the synthetic dataset.

Logistic model, synthetic data (2,000 samples): per message the model is 7,850 float32 =
31,400 B. Messages travel in the compact layout (protocol/wire.py): one ConfigRecord `wire`
whose one entry "frame" (5 B of key) holds the frame. A frame's header, by hand: magic and
version 3 B, the codec 1 B (a name of the protocol's table), the record count 1 B; the record
"arrays" (kind, name from the table, count) 3 B with its arrays "linear.weight" (name 0, 13,
13 B; dtype, flags, rank 3 B; dims 10, 784 as varints 1 + 2 = 21 B) and "linear.bias" (2 + 11
+ 3 + 1 = 17 B); a record "config" or "metrics" 3 B. Each scalar entry: its name 1 B (from
the table), its type 1 B and its value: "server-round" (zigzag of 1 or 2: 1 B) 3 B,
"train-loss" (a double) 10 B, "num-examples" (500 of 4 clients' partitions, zigzag 1,000:
2 B) 4 B, and the wire mod's "client-down-message-bytes" and "client-up-message-bytes"
(doubles) 20 B.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from experiment.models import build_model
from tests.support import (
    REPO,
    leftover_processes,
    module_command,
    run_folder,
    run_module,
    write_cifar10,
    write_plays,
)

MODEL_BYTES = 7850 * 4
FRAME_KEY = 5
MODEL_HEADER = 3 + 1 + 1 + 3 + 21 + 17  # a frame's header up to the model's arrays
SIZE_ENTRIES = 20
DOWN_WIRE = FRAME_KEY + MODEL_HEADER + 3 + 3 + MODEL_BYTES
UP_WIRE = FRAME_KEY + MODEL_HEADER + 3 + 10 + 4 + SIZE_ENTRIES + MODEL_BYTES
RUN_CONFIG = "dataset='synthetic' model='logistic' num-server-rounds=2 fraction-train=0.5 seed=7"
RUN_CONFIG_DICT = "'dataset': 'synthetic', 'model': 'logistic', 'num-server-rounds': 2, 'seed': 7,"

pytestmark = pytest.mark.e2e


def assert_exact_fedavg_logs(run_dir: Path) -> None:
    """4 clients, fraction 0.5 -> 2 per round, 2 rounds: every message's bytes by hand."""
    rounds = pd.read_csv(run_dir / "rounds.csv")
    messages = pd.read_csv(run_dir / "bandwidth.csv")
    train = messages[messages["phase"] == "train"]
    assert rounds["round"].tolist() == [0, 1, 2]
    assert rounds["selected"].tolist() == [0, 2, 2]
    assert train[train["direction"] == "down"]["content_bytes"].unique().tolist() == [DOWN_WIRE]
    assert train[train["direction"] == "up"]["content_bytes"].unique().tolist() == [UP_WIRE]
    # the client measured the same messages on its side of the transport
    assert (messages["client_message_bytes"] == messages["message_bytes"]).all()
    # a train message is 3 objects (message, record dict, ConfigRecord): 5 requests down
    # (pull-messages, 3 pull-object, confirm), 4 up (push-messages, 3 push-object)
    assert set(train["requests"]) == {4, 5}
    assert (train["dense_bytes"] == MODEL_BYTES).all()
    assert rounds["cum_content_bytes"].iloc[-1] == messages["content_bytes"].sum()
    assert rounds["cum_transport_bytes"].iloc[-1] == messages["transport_bytes"].sum()
    summary = pd.read_json(run_dir / "summary.json", typ="series")
    assert summary["bandwidth"]["formula_bytes"] == 2 * MODEL_BYTES * 4 * 0.5 * 2
    assert summary["bandwidth"]["train_payload_bytes"] == 2 * MODEL_BYTES * 4 * 0.5 * 2
    assert summary["bandwidth"]["train_content_bytes"] == 4 * (DOWN_WIRE + UP_WIRE)


def test_two_flwr_runs_at_once_write_exact_logs_and_leave_nothing_running(tmp_path):
    # Execute: two launches side by side, each on a SuperLink of its own (free ports)
    launches = [
        subprocess.Popen(
            module_command(
                "flower_app.launch",
                "--num-supernodes",
                "4",
                "--run-config",
                f"{RUN_CONFIG} output-dir='{tmp_path}' run-name='launch-{index}'",
            ),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(2)
    ]
    outputs = [
        subprocess.CompletedProcess(launch.args, launch.wait(timeout=300), *launch.communicate())
        for launch in launches
    ]
    # Assert: both finished with exact logs, the same ones; nothing of theirs is left running
    folders = [run_folder(output) for output in outputs]
    for folder in folders:
        assert_exact_fedavg_logs(folder)
    first, second = (folder / "bandwidth.csv" for folder in folders)
    assert first.read_bytes() == second.read_bytes()
    assert leftover_processes() == []


def test_same_seed_gives_identical_logs(tmp_path):
    # the quant preset with every random stream: stochastic rounding, lost refinements, and a
    # random-walk network with device speeds and a deadline
    quant = (
        "strategy='quant' quant.scheme='progressive' quant.stochastic=true "
        "quant.refine-loss=0.5 quant.down-bits=8 quant.error-feedback=true "
        "net.channel='random-walk' net.policy='partial' net.deadline-s=0.8 "
        "net.seconds-per-sample=1e-4 net.min-bps=1e5 net.max-bps=1e6 "
        "net.change-low-bps=-2e5 net.change-high-bps=2e5"
    )
    folders = []
    for name in ("first", "second"):
        output = run_module(
            "flower_app.simulation",
            "--num-supernodes",
            "4",
            "--run-config",
            f"{RUN_CONFIG} {quant} output-dir='{tmp_path}' run-name='{name}'",
        )
        folders.append(run_folder(output))
    first, second = (
        pd.read_csv(folder / "rounds.csv").drop(columns="wall_s") for folder in folders
    )
    pd.testing.assert_frame_equal(first, second)
    assert first["test_accuracy"].iloc[-1] > first["test_accuracy"].iloc[0]
    assert first["sim_time_s"].iloc[-1] > 0
    train = pd.read_csv(folders[0] / "bandwidth.csv").query("phase == 'train'")
    assert "partial" in set(train["status"])
    assert set(train["status"]) <= {"delivered", "partial", "dropped"}
    assert train["sim_end_s"].notna().all()
    for name in ("bandwidth.csv", "channels.csv"):
        assert (folders[0] / name).read_bytes() == (folders[1] / name).read_bytes()
    assert (folders[0] / "channels.png").stat().st_size > 0


def test_qsfl_uplink_is_the_scalars_of_all_candidates_and_the_segments_of_the_chosen(tmp_path):
    # Execute: 10 candidates a round, the best int(10 x 0.3) = 3 upload one of 6 segments
    qsfl = "strategy='qsfl' fraction-train=1.0 qsfl.upload-fraction=0.3 qsfl.num-segments=6"
    output = run_module(
        "flower_app.simulation",
        "--num-supernodes",
        "10",
        "--run-config",
        f"{RUN_CONFIG} {qsfl} output-dir='{tmp_path}'",
    )
    run_dir = run_folder(output)
    # Assert. A report: the frame key (5) + a frame naming codec "qsfl": 3 + 1 + 1, the record
    # "metrics" 3, its entries "train-loss" 10, "num-examples" (200 of 10 clients' partitions,
    # zigzag 400: 2 B) 4, "relevance" 10 and the size entries 20: 57 B; its payload 3 x 64
    # bits. A segment: 7,850 = 2 x 1,309 + 4 x 1,308 entries, in a frame naming codec "none"
    # (the request asks for no quantizer): 3 + 1 + 1, the record "arrays" 3 with the array
    # "values" (its name from the table 1, dtype, flags, rank 3, its length 2) 6, "metrics" 3
    # with "train-loss", "num-examples" and the sizes 34; 4 B an entry: 56 + 4 n.
    messages = pd.read_csv(run_dir / "bandwidth.csv")
    rounds = pd.read_csv(run_dir / "rounds.csv").set_index("round")
    for server_round in (1, 2):
        up = messages.query(f"round == {server_round} and direction == 'up'")
        reports, uploads = up[up["phase"] == "train"], up[up["phase"] == "upload"]
        assert len(reports) == 10 and (reports["content_bytes"] == 57).all()
        assert (reports["payload_bits"] == 192).all()
        assert len(uploads) == 3
        for row in uploads.itertuples():
            entries = 1309 if (row.partition_id + server_round) % 6 < 2 else 1308
            assert (row.content_bytes, row.payload_bits) == (56 + 4 * entries, 32 * entries)
        assert (
            rounds.loc[server_round, "up_content_bytes"] == 10 * 57 + uploads["content_bytes"].sum()
        )
        assert rounds.loc[server_round, "delivered"] == 3
    segments = pd.read_csv(run_dir / "segments.csv")
    assert segments.groupby("round")["senders"].sum().tolist() == [3, 3]
    assert segments.groupby("round")["senders"].max().tolist() == [1, 1]  # coverage first


@pytest.mark.parametrize("module", ["flower_app.launch", "flower_app.simulation"])
def test_kill_9_leaves_no_process_behind(tmp_path, module):
    # Prepare: a long run, killed with SIGKILL once its first round is logged
    launch = subprocess.Popen(
        module_command(
            module,
            "--num-supernodes",
            "4",
            "--run-config",
            f"{RUN_CONFIG.replace('num-server-rounds=2', 'num-server-rounds=500')} "
            f"output-dir='{tmp_path}' run-name='killed'",
        ),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rounds = tmp_path / "killed" / "rounds.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(rows_of(rounds)) < 3:  # header, rounds 0 and 1
        time.sleep(0.5)
    assert len(rows_of(rounds)) >= 3, "the run did not start"
    # Execute
    launch.kill()
    launch.wait()
    # Assert: within 10 s, no process of any launch of this checkout is left
    deadline = time.monotonic() + 10
    while leftover_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert leftover_processes() == []


def test_a_run_killed_with_sigkill_and_resumed_writes_an_uninterrupted_runs_logs(tmp_path):
    # Prepare: STC on both links (client and server state) over a random-walk network with a
    # deadline (the clock's state), 6 rounds of 2 of 4 clients; once uninterrupted, once
    # killed with SIGKILL after round 2's row and resumed with --resume
    settings = (
        f"{RUN_CONFIG.replace('num-server-rounds=2', 'num-server-rounds=6')} strategy='stc' "
        "net.channel='random-walk' net.policy='drop' net.deadline-s=5.0 "
        f"output-dir='{tmp_path}'"
    )
    args = ("--num-supernodes", "4", "--run-config")
    whole = run_folder(run_module("flower_app.simulation", *args, f"{settings} run-name='whole'"))
    killed = subprocess.Popen(
        module_command("flower_app.simulation", *args, f"{settings} run-name='killed'"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rounds = tmp_path / "killed" / "rounds.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(rows_of(rounds)) < 4:  # header, rounds 0-2
        time.sleep(0.05)
    killed.kill()
    killed.wait()
    assert 4 <= len(rows_of(rounds)) < 8, "killed before round 2 or after the last round"
    # Execute
    resumed = run_folder(run_module("flower_app.simulation", "--resume", str(tmp_path / "killed")))
    # Assert: the same bytes, selections, times and accuracy, row for row
    for name in ("bandwidth.csv", "channels.csv"):
        assert (resumed / name).read_bytes() == (whole / name).read_bytes(), name
    first, second = (pd.read_csv(d / "rounds.csv").drop(columns="wall_s") for d in (whole, resumed))
    pd.testing.assert_frame_equal(first, second)
    assert len(first) == 7
    assert not (resumed / "client-state").exists()  # dropped at the end: checkpoint.npz stays
    assert (resumed / "checkpoint.npz").is_file()


def test_a_users_own_mod_runs_inside_the_simulated_clients(tmp_path):
    # Prepare: STC, 2 clients, 2 rounds through the Python API with a user's mod that notes
    # each train reply in a folder (tests.support.marking_mod)
    script = (
        "import os; from flower_app.simulation import run_experiment; "
        "from tests.support import marking_mod; print('driver', os.getpid()); "
        f"run_experiment({{{RUN_CONFIG_DICT} 'strategy': 'stc', 'fraction-train': 1.0, "
        f"'output-dir': '{tmp_path}', 'run-name': 'run'}}, num_supernodes=2, "
        "client_mods=[marking_mod])"
    )
    marks = tmp_path / "marks"
    marks.mkdir()
    # Execute
    output = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=os.environ | {"MARK_DIR": str(marks)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # Assert: one mark per client and round, written in the Ray actors (not the driver),
    # each seeing the dense trained model; the updates still travelled as STC
    assert output.returncode == 0, output.stdout[-3000:] + output.stderr[-3000:]
    driver = output.stdout.split("driver ", 1)[1].split()[0]
    files = list(marks.iterdir())
    assert len(files) == 2 * 2
    assert {f.name.split("-")[0] for f in files}.isdisjoint({driver})
    assert {f.read_text() for f in files} == {"linear.bias,linear.weight"}
    up = pd.read_csv(tmp_path / "run" / "bandwidth.csv").query("phase == 'train'")
    assert set(up.loc[up["direction"] == "up", "codec"]) == {"stc"}


def rows_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


FAULTS_CONFIG = "dataset='synthetic' model='logistic' num-server-rounds=3 fraction-train=1.0 seed=7"


def faulty_run(output_dir: Path, name: str, settings: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A 5-client simulation with `settings` that must finish: its rounds.csv, bandwidth.csv."""
    run_dir = run_folder(
        run_module(
            "flower_app.simulation",
            "--num-supernodes",
            "5",
            "--run-config",
            f"{FAULTS_CONFIG} {settings} output-dir='{output_dir}' run-name='{name}'",
        )
    )
    return pd.read_csv(run_dir / "rounds.csv"), pd.read_csv(run_dir / "bandwidth.csv")


def within_one_point(accuracy: float, reference: float) -> bool:
    """At most one percentage point apart (0.99 vs 0.98 is one point, float error aside)."""
    return round(abs(accuracy - reference), 9) <= 0.01


@pytest.fixture(scope="module")
def fault_free(tmp_path_factory):
    """The final accuracy of the same run without faults, per strategy settings (cached)."""
    runs: dict[str, float] = {}

    def accuracy(strategy: str) -> float:
        if strategy not in runs:
            folder = tmp_path_factory.mktemp("clean")
            rounds, _ = faulty_run(folder, "clean", strategy)
            runs[strategy] = rounds["test_accuracy"].iloc[-1]
        return runs[strategy]

    return accuracy


@pytest.mark.parametrize(
    ("strategy", "fault", "status"),
    [
        ("", "fail", "failed"),
        ("", "nan", "rejected"),
        ("", "huge", "rejected"),  # finite: the outlier-norm-ratio rule
        ("", "garbage", "rejected"),
        ("", "truncate", "rejected"),
        ("", "examples", "rejected"),  # num-examples NaN
        ("", "metrics", "rejected"),  # a foreign metric key
        ("", "dtype", "rejected"),  # float64 arrays
        ("strategy='stc' stc.p-up=0.1 stc.p-down=0.1", "garbage", "rejected"),
        ("strategy='quant' quant.scheme='float'", "truncate", "rejected"),
    ],
)
def test_an_injected_fault_is_logged_and_left_out(tmp_path, fault_free, strategy, fault, status):
    # Execute: client 0 misbehaves every round
    settings = f"{strategy} faults.kind='{fault}' faults.clients='0'"
    rounds, messages = faulty_run(tmp_path, "faulty", settings)
    # Assert: its updates carry the fault's status, the others are delivered, the run ends
    # with a finite model within 1 point of the same run without the fault
    up = messages.query("phase == 'train' and direction == 'up'")
    assert set(up.loc[up["partition_id"] == 0, "status"]) == {status}
    assert set(up.loc[up["partition_id"] != 0, "status"]) == {"delivered"}
    assert rounds["delivered"].tolist() == [0, 4, 4, 4]
    assert pd.notna(rounds["test_loss"]).all() and (rounds["test_loss"] < 1e3).all()
    assert within_one_point(rounds["test_accuracy"].iloc[-1], fault_free(strategy))


QSFL_SETTINGS = "strategy='qsfl' qsfl.upload-fraction=1.0"


@pytest.mark.parametrize(
    ("fault", "phase", "status"),
    [
        ("fail", "train", "failed"),
        ("examples", "train", "rejected"),
        ("garbage", "upload", "rejected"),
    ],
)
def test_a_fault_in_either_qsfl_phase_is_logged_and_left_out(
    tmp_path, fault_free, fault, phase, status
):
    # Execute: client 0 misbehaves in both phases of every round (everybody uploads)
    settings = f"{QSFL_SETTINGS} faults.kind='{fault}' faults.clients='0'"
    rounds, messages = faulty_run(tmp_path, "faulty", settings)
    # Assert: the phase its fault shows in carries the status; a client left out of the
    # ranking uploads nothing; the other clients deliver in both phases
    up = messages.query("direction == 'up' and phase in ('train', 'upload')")
    bad = up[up["partition_id"] == 0]
    assert set(bad.loc[bad["phase"] == phase, "status"]) == {status}
    assert set(bad["phase"]) == ({"train"} if phase == "train" else {"train", "upload"})
    assert set(up.loc[up["partition_id"] != 0, "status"]) == {"delivered"}
    assert rounds["delivered"].tolist() == [0, 4, 4, 4]
    assert within_one_point(rounds["test_accuracy"].iloc[-1], fault_free(QSFL_SETTINGS))


def test_a_hung_client_times_out_and_the_rounds_go_on(tmp_path, fault_free):
    # Execute: client 0 holds its round-1 reply back 8 s; a round waits 4 s at most
    settings = "faults.kind='hang' faults.clients='0' faults.rounds='1' faults.hang-s=8"
    rounds, messages = faulty_run(tmp_path, "hung", f"{settings} round-timeout-s=4")
    # Assert: round 1 ends at the timeout without client 0 (its message down is `timeout`,
    # no reply logged); from round 2 on every client delivers (Flower's simulation runs the
    # next messages on its other worker while the hung one sleeps)
    train = messages.query("phase == 'train'")
    first = train[(train["round"] == 1) & (train["partition_id"] == 0)]
    assert first[["direction", "status"]].values.tolist() == [["down", "timeout"]]
    assert set(train.loc[train["round"] > 1, "status"]) == {"delivered"}
    assert rounds["delivered"].tolist() == [0, 4, 5, 5]
    assert 4.0 <= rounds["wall_s"].iloc[1] < 6.0
    assert within_one_point(rounds["test_accuracy"].iloc[-1], fault_free(""))


@pytest.mark.parametrize(
    ("model", "arrays", "parameters"), [("vgg11", 22, 9_750_922), ("resnet18", 62, 11_173_962)]
)
def test_a_cifar10_model_trains_a_round_with_exact_bytes(tmp_path, model, arrays, parameters):
    # Prepare: CIFAR-10's file format with 10 images a batch (50 to train, 10 to test)
    write_cifar10(tmp_path / "cifar", per_batch=10)
    settings = (
        f"dataset='cifar10' data-dir='{tmp_path / 'cifar'}' model='{model}' partitioner='iid' "
        "num-server-rounds=1 fraction-train=1.0 fraction-evaluate=0.0 batch-size=10 seed=7 "
        f"output-dir='{tmp_path}' run-name='run'"
    )
    # Execute: 2 clients, one round
    run_dir = run_folder(
        run_module("flower_app.simulation", "--num-supernodes", "2", "--run-config", settings)
    )
    # Assert: each message is the model's float32 parameters (there is no buffer) in one
    # frame larger than a chunk, so it travels as a uint8 array (ArrayRecord "wire": key
    # "frame" 5 B + a 128-byte .npy header); the frame's header: 3 + 1 + 1, the record
    # "arrays" 3 and per array its name (0, length, name), dtype, flags, rank (3 B) and
    # dimensions (varints: 1 byte below 128, 2 below 16,384); the request adds the record
    # "config" (3 B) with "server-round" (3 B), the reply "metrics" (3 B) with "train-loss"
    # (10 B), "num-examples" (25, zigzag 50: 3 B) and the wire mod's sizes (20 B)
    messages = pd.read_csv(run_dir / "bandwidth.csv").query("phase == 'train'")
    assert len(messages) == 4 and set(messages["status"]) == {"delivered"}
    assert (messages["payload_bits"] == 32 * parameters).all()
    assert (messages["dense_bytes"] == 4 * parameters).all()
    shapes = {name: value.shape for name, value in build_model(model, 0).state_dict().items()}
    assert len(shapes) == arrays
    described = sum(
        2 + len(name) + 3 + sum(1 if dim < 128 else 2 for dim in shape)
        for name, shape in shapes.items()
    )
    framing = 5 + 128 + 3 + 1 + 1 + 3 + described + 4 * parameters
    down, up = (messages[messages["direction"] == d]["content_bytes"] for d in ("down", "up"))
    assert set(down) == {framing + 3 + 3} and set(up) == {framing + 3 + 10 + 3 + SIZE_ENTRIES}
    rounds = pd.read_csv(run_dir / "rounds.csv")
    assert rounds["delivered"].tolist() == [0, 2] and pd.notna(rounds["test_loss"]).all()


def test_the_lstm_trains_on_speaking_roles(tmp_path):
    # Prepare: two plays whose roles of 12 and 20 windows make two clients
    write_plays(tmp_path / "plays")
    settings = (
        f"dataset='shakespeare-roles' data-dir='{tmp_path / 'plays'}' model='lstm' "
        "partitioner='natural' num-server-rounds=2 fraction-train=1.0 batch-size=4 seed=7 "
        f"output-dir='{tmp_path}' run-name='run'"
    )
    # Execute
    output = run_module("flower_app.simulation", "--num-supernodes", "2", "--run-config", settings)
    run_dir = run_folder(output)
    # Assert: the partitions are the roles (10 and 18 windows to train, 4 to test), every
    # update carries the LSTM's 866,560 float32 parameters, the model is finite
    assert "partitions (natural): 28 training samples, per client min 10, median 14, max 18" in (
        output.stdout + output.stderr
    )
    messages = pd.read_csv(run_dir / "bandwidth.csv").query("phase == 'train'")
    assert set(messages["status"]) == {"delivered"} and len(messages) == 8
    assert (messages["payload_bits"] == 32 * 866_560).all()
    rounds = pd.read_csv(run_dir / "rounds.csv")
    assert rounds["delivered"].tolist() == [0, 2, 2] and pd.notna(rounds["test_loss"]).all()

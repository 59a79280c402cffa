"""Helpers the test modules share: hand-built models, messages, grids, traces and runs.

Fixtures live in conftest.py; these are plain functions and classes, imported by name.
"""

from __future__ import annotations

import csv
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.app.message import make_message
from flwr.common.constant import SUPERLINK_NODE_ID

from experiment.config import parse
from experiment.recorder import ROUND_COLUMNS, Recorder
from flower_app.processes import FLWR_ROOT, processes_under
from ledger.levels import measure
from mods.quant_mod import quant_mod
from mods.wire_mod import wire_mod
from protocol import keys
from strategies import BandwidthFedAvg, QuantFedAvg


# ---------------------------------------------------------------- a dense model and its grid
def model(value: float = 0.0) -> ArrayRecord:
    return ArrayRecord(
        {"w": Array(np.full((2, 3), value, np.float32)), "b": Array(np.full(3, value, np.float32))}
    )


def train_reply(msg: Message, value: float, examples: int = 10, loss: float = 0.5) -> Message:
    metrics = MetricRecord({keys.TRAIN_LOSS: loss, keys.NUM_EXAMPLES: examples})
    return Message(RecordDict({keys.ARRAYS: model(value), keys.METRICS: metrics}), reply_to=msg)


class FakeGrid:
    """A grid whose nodes answer the partition query; node ids differ from partition ids."""

    def __init__(self, partitions: int, node_offset: int = 1000) -> None:
        self.partition_of_node = {node_offset + 7 * pid: pid for pid in range(partitions)}
        self.partitions = partitions
        self.run = SimpleNamespace(run_id=77)  # what a ServerApp reads of Flower's Run
        self.dead: set[int] = set()  # nodes whose heartbeat lapsed: the SuperLink answers

    def get_node_ids(self):
        return list(self.partition_of_node)

    def restart(self, partition_id: int) -> int:
        """The node of `partition_id` comes back under a new node id (as a restarted
        SuperNode); returns that id."""
        old = next(node for node, pid in self.partition_of_node.items() if pid == partition_id)
        del self.partition_of_node[old]
        new = max(self.partition_of_node, default=old) + 1
        self.partition_of_node[new] = partition_id
        return new

    @staticmethod
    def push(messages):
        """Give each message its id, as Flower's grids do when they push it."""
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        return messages

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for msg in self.push(messages):
            node_id = msg.metadata.dst_node_id
            if node_id in self.dead:  # the SuperLink answers for it: "Node Unavailable"
                replies.append(superlink_error_reply(msg))
                continue
            pid = self.partition_of_node[node_id]
            metrics = MetricRecord({keys.PARTITION_ID: pid, keys.NUM_PARTITIONS: self.partitions})
            replies.append(Message(RecordDict({keys.METRICS: metrics}), reply_to=msg))
        return replies[::-1]  # arrival order must not matter


class ClientGrid(FakeGrid):
    """A grid whose nodes run this app's real ClientApp (every mod, real training) in this
    process, one Context per node: an experiment without Ray, for the composition tests."""

    def __init__(self, run_config: dict, partitions: int) -> None:
        super().__init__(partitions)
        from flower_app.client_app import make_client_app  # torch and the data: only here

        self.app = make_client_app(run_config)
        self.contexts = {
            node: Context(
                77,
                node,
                {keys.PARTITION_ID: pid, keys.NUM_PARTITIONS: partitions},
                RecordDict(),
                run_config,
            )
            for node, pid in self.partition_of_node.items()
        }

    def send_and_receive(self, messages, timeout=None):
        """The replies in the order of their nodes (as of their partitions): Flower's own
        strategies sum them in arrival order, the wrapper in partition order."""
        replies = [
            self.app(msg, self.contexts[msg.metadata.dst_node_id]) for msg in self.push(messages)
        ]
        return sorted(replies, key=lambda reply: reply.metadata.src_node_id)


CLIENTS = 4  # of the in-process runs


def initial_model(flat: dict) -> ArrayRecord:
    config = parse(flat)
    from experiment.models import build_model

    return ArrayRecord(build_model(config.model, config.seed).state_dict())


def wrapped_run(flat: dict, run_dir: Path):
    """The rounds of the wrapper the config asks for, on the real ClientApp in process:
    (the final model, the recorder, the strategy)."""
    from strategies import build_strategy

    recorder = Recorder(run_dir)
    strategy = build_strategy(parse(flat), recorder)
    grid = ClientGrid(flat, CLIENTS)
    strategy.discover_partitions(grid)

    def evaluate_fn(server_round, arrays):
        if server_round:
            strategy.finish_round(server_round, 0.0, 0.0)

    rounds = parse(flat).num_server_rounds
    result = strategy.start(
        grid=grid, initial_arrays=initial_model(flat), num_rounds=rounds, evaluate_fn=evaluate_fn
    )
    return {name: array.numpy() for name, array in result.arrays.items()}, recorder, strategy


def superlink_error_reply(msg: Message) -> Message:
    """The reply Flower's SuperLink makes for a message to a node whose heartbeat lapsed:
    its source is the SuperLink's own node id (create_message_error_unavailable_res_message)."""
    metadata = Metadata(
        run_id=msg.metadata.run_id,
        message_id="",
        src_node_id=SUPERLINK_NODE_ID,
        dst_node_id=SUPERLINK_NODE_ID,
        reply_to_message_id=msg.metadata.message_id,
        group_id=msg.metadata.group_id,
        message_type=msg.metadata.message_type,
        created_at=msg.metadata.created_at,
        ttl=msg.metadata.ttl,
    )
    return make_message(metadata=metadata, error=Error(code=3, reason="Node Unavailable"))


def make_strategy(flat_config, tmp_path, partitions=4, node_offset=1000, **overrides):
    flat_config.update(overrides)
    recorder = Recorder(tmp_path / f"run-{node_offset}")
    strategy = BandwidthFedAvg(parse(flat_config), recorder)
    grid = FakeGrid(partitions, node_offset)
    strategy.discover_partitions(grid)
    return strategy, grid, recorder


def read_rows(recorder: Recorder, name: str = "bandwidth.csv") -> list[dict]:
    recorder._messages.flush()
    with (recorder.run_dir / name).open() as file:
        return list(csv.DictReader(file))


# ---------------------------------------------------------------- client-side messages
SHAPES = {"w": (4, 25), "b": (5,)}


def random_model(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()}


def record(tensors: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({n: Array(v) for n, v in tensors.items()})


def context() -> Context:
    return Context(1, 1, {keys.PARTITION_ID: 0, keys.NUM_PARTITIONS: 1}, RecordDict(), {})


def train_message(content: RecordDict) -> Message:
    return Message(content, message_type=MessageType.TRAIN, dst_node_id=1)


def trainer(step: dict[str, np.ndarray], seen: list):
    """A call_next that adds `step` to the model it receives and records that model."""

    def call_next(msg: Message, ctx: Context) -> Message:
        received = {n: a.numpy() for n, a in msg.content[keys.ARRAYS].items()}
        seen.append(received)
        trained = record({n: received[n] + step[n] for n in received})
        metrics = MetricRecord({keys.TRAIN_LOSS: 1.0, keys.NUM_EXAMPLES: 10})
        return Message(RecordDict({keys.ARRAYS: trained, keys.METRICS: metrics}), reply_to=msg)

    return call_next


def run_round(strategy: QuantFedAvg, grid: FakeGrid, clients: dict, start: dict, steps: dict):
    """One round through the real mods; returns the new global model (None: none usable)."""
    messages = list(strategy.configure_train(1, record(start), ConfigRecord(), grid))
    replies = []
    for msg in messages:
        pid = grid.partition_of_node[msg.metadata.dst_node_id]
        ctx = clients.setdefault(pid, context())
        chain = lambda m, c, pid=pid: quant_mod(m, c, trainer(steps[pid], []))  # noqa: E731
        replies.append(wire_mod(msg, ctx, chain))
    arrays, _ = strategy.aggregate_train(1, replies)
    return None if arrays is None else {name: arrays[name].numpy() for name in SHAPES}


def marking_mod(msg: Message, context: Context, call_next) -> Message:
    """A user's own client mod: writes, into $MARK_DIR, one file per train reply named by
    its process id and holding the names of the arrays it saw the handler reply with."""
    reply = call_next(msg, context)
    if msg.metadata.message_type == MessageType.TRAIN and not reply.has_error():
        names = ",".join(sorted(reply.content[keys.ARRAYS]))
        (Path(os.environ["MARK_DIR"]) / f"{os.getpid()}-{uuid.uuid4().hex}").write_text(names)
    return reply


# ---------------------------------------------------------------- a simulated network
# The trace's rates are set in units of a train request's bits (D) and a dense reply's
# bits (U): a client with rate D receives the model in 1 s.
def message_bits() -> tuple[float, float, int, int]:
    """Transport bits of a train request and of a dense reply, and their request counts."""
    config = ConfigRecord({keys.SERVER_ROUND: 1})
    content = RecordDict({keys.ARRAYS: model(), keys.CONFIG: config})
    request = Message(content, message_type=MessageType.TRAIN, dst_node_id=1000)
    down, up = measure(request, "down"), measure(train_reply(request, 1.0), "up")
    return 8.0 * down.transport_bytes, 8.0 * up.transport_bytes, down.requests, up.requests


def trace_rates() -> dict[int, list[tuple[float, float, float]]]:
    """Per client: (time_s, up_bps, down_bps) rows."""
    d, u, _, _ = message_bits()
    return {
        0: [(0, u, d)],  # down 1 s, compute 1 s, up 1 s: arrives at 3.0
        1: [(0, u, d), (2.5, u / 2, d)],  # up from 2.0: 0.5 s at U, 1 s at U / 2: 3.5
        2: [(0, u / 2, d / 2)],  # down 2 s, compute 1 s, up 2 s: 5.0
        3: [(0, u, d / 4)],  # down 4 s, compute 1 s, up 1 s: 6.0
    }


def write_trace(path, trace=None):
    trace = trace_rates() if trace is None else trace
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["client", "time_s", "up_bps", "down_bps"])
        for client, rows in trace.items():
            writer.writerows([client, *row] for row in rows)
    return str(path)


# ---------------------------------------------------------------- real runs
REPO = Path(__file__).resolve().parents[1]


def module_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        module_command(module, *args),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def run_folder(output: subprocess.CompletedProcess) -> Path:
    assert output.returncode == 0, output.stdout[-3000:] + output.stderr[-3000:]
    return Path(output.stdout.strip().splitlines()[-1].removeprefix("run folder: "))


def leftover_processes() -> list:
    """Processes of any launch of this checkout still running (none after a launch ends)."""
    homes = list(FLWR_ROOT.iterdir()) if FLWR_ROOT.exists() else []
    return [process for home in homes for process in processes_under(home)]


# ---------------------------------------------------------------- a rounds.csv
# round, selected, delivered, up, down, cum up, cum down, cum (transport bytes), train_loss,
# test_loss, test_accuracy, sim_time_s, wall_s; content bytes are half the transport bytes
ROWS = [
    (0, 0, 0, 100, 0, 100, 0, 100, "", 2.3, 0.10, 0.0, 1.0),
    (1, 2, 2, 1000, 4000, 1100, 4000, 5100, 1.0, 1.5, 0.55, 30.0, 1.0),
    (2, 2, 1, 1000, 4000, 2100, 8000, 10100, 0.8, 1.0, 0.72, 55.5, 1.0),
    (3, 2, 2, 1000, 4000, 3100, 12000, 15100, 0.6, 0.9, 0.70, 80.0, 1.0),
]


def rounds_table(with_network: bool = True) -> pd.DataFrame:
    names = ["round", "selected", "delivered", "up_transport_bytes", "down_transport_bytes"]
    names += ["cum_up_transport_bytes", "cum_down_transport_bytes", "cum_transport_bytes"]
    names += ["train_loss", "test_loss", "test_accuracy", "sim_time_s", "wall_s"]
    table = pd.DataFrame(ROWS, columns=names)
    for level in ("up", "down", "cum"):
        table[f"{level}_content_bytes"] = table[f"{level}_transport_bytes"] // 2
    if not with_network:
        table["sim_time_s"] = ""
    return table[list(ROUND_COLUMNS)]


# ---------------------------------------------------------------- a CIFAR-10 of our own
def write_cifar10(folder: Path, per_batch: int = 10, archive: bool = True) -> Path:
    """CIFAR-10's python files with `per_batch` images a batch (pixel = index + channel x 7).

    As the dataset ships them: pickled dicts with b"data" (n x 3,072 uint8, channel-major)
    and b"labels", in `cifar-10-batches-py/`, tarred and gzipped as cifar-10-python.tar.gz
    (or left unpacked with `archive=False`).
    """
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for offset, name in enumerate(names):
        index = np.arange(offset * per_batch, (offset + 1) * per_batch)
        channel = np.repeat(np.arange(3), 1024)
        data = ((index[:, None] + 7 * channel[None, :]) % 256).astype(np.uint8)
        labels = [int(i % 10) for i in index]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data}
        (batches / name).write_bytes(pickle.dumps(batch))
    if archive:
        with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
            tar.add(batches, arcname="cifar-10-batches-py")
        shutil.rmtree(batches)
    return folder


# ---------------------------------------------------------------- a Hub dataset of our own
def write_hub_dataset(folder: Path, form: str, rgb: bool = False, image: str = "image") -> Path:
    """A small image dataset as the Hub stores it (`form="parquet"`: data/<split>-*.parquet)
    or as `save_to_disk` writes it (`form="disk"`): 20 train and 5 test images whose pixels
    all equal their index, labels index % 10."""
    import datasets
    from PIL import Image

    shape = (32, 32, 3) if rgb else (28, 28)
    features = datasets.Features({image: datasets.Image(), "label": datasets.ClassLabel(10)})
    splits = {}
    for split, indices in (("train", range(20)), ("test", range(20, 25))):
        pictures = [Image.fromarray(np.full(shape, i, np.uint8)) for i in indices]
        table = {image: pictures, "label": [i % 10 for i in indices]}
        splits[split] = datasets.Dataset.from_dict(table, features=features)
    if form == "disk":
        datasets.DatasetDict(splits).save_to_disk(str(folder))
    else:
        (folder / "data").mkdir(parents=True)
        for split, data in splits.items():
            data.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def write_hub_text(folder: Path) -> Path:
    """A small text dataset as the Hub stores it (Parquet): train rows of speakers "b", "a",
    "b" and "c" (64, 66, 64 and 10 characters), test rows of 70 and 60 characters; a column
    `row` holds each row's index."""
    import datasets

    splits = {
        "train": {"text": ["b" * 64, "a" * 66, "b" * 64, "c" * 10], "speaker": list("babc")},
        "test": {"text": ["t" * 70, "u" * 60], "speaker": list("ab")},
    }
    (folder / "data").mkdir(parents=True)
    for split, table in splits.items():
        table["row"] = list(range(len(table["text"])))
        path = folder / "data" / f"{split}-00000-of-00001.parquet"
        datasets.Dataset.from_dict(table).to_parquet(str(path))
    return folder


# ---------------------------------------------------------------- plays of our own
def write_plays(folder: Path) -> Path:
    """Two short plays in the modern texts' layout: roles of 13, 21 and 6 speeches.

    Each speech is 64 characters; joined with newlines a role of k speeches is 65k - 1 bytes,
    that is k - 1 windows of 65 bytes, each one speech and its newline: 12, 20 and 5 windows.
    """
    folder.mkdir(parents=True)

    def speech(role: str, index: int) -> str:
        return f"{role}.\n" + f"{role} line {index:03d} ".ljust(64, "x")

    first = [speech("Ham", i) for i in range(13)] + [speech("Hor", i) for i in range(21)]
    second = [speech("Puck", i) for i in range(6)]
    (folder / "a_gut.txt").write_text("ACT I.\n\n" + "\n\n".join(first) + "\n")
    (folder / "b_gut.txt").write_text("\n\n".join(second) + "\n")
    return folder

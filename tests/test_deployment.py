"""Flower's deployment engine: a real SuperLink and SuperNodes, discovery, bundle, TLS files."""

from __future__ import annotations

import contextlib
import io
import socket
import ssl
import threading
import tomllib
import zipfile

import pandas as pd
import pytest
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.app import Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.cli.build import build_fab_from_disk
from flwr.common.config import unflatten_dict

from experiment.config import ConfigError, parse
from experiment.recorder import Recorder
from flower_app import deploy
from flower_app.byte_meter import ByteMeter
from flower_app.certificates import write_node_key, write_tls_files
from flower_app.client_app import make_client_app
from flower_app.deploy import Deployment
from flower_app.processes import LOOPBACK
from flower_app.server_app import run_federation
from flower_app.transport_check import check, flower_counter
from ledger.book import CLIENT_KEYS
from protocol import keys
from strategies import BandwidthFedAvg, discovery
from strategies.discovery import DiscoveryError, missing_partitions, setup_problem
from tests.support import REPO, FakeGrid, leftover_processes, read_rows, run_folder, run_module

DEPLOY_CONFIG = "dataset='synthetic' model='logistic' num-server-rounds=2 fraction-train=1.0 seed=7"


# ---------------------------------------------------------------- the real thing
@pytest.mark.e2e
@pytest.mark.parametrize("strategy", ["fedavg", "stc"])
def test_deployment_logs_equal_the_simulation(tmp_path, strategy):
    # Execute: the same experiment on a SuperLink + 2 SuperNodes and in a simulation
    run_config = f"{DEPLOY_CONFIG} strategy='{strategy}' output-dir='{tmp_path}'"
    deployed = run_folder(
        run_module(
            "flower_app.deploy",
            "--supernodes",
            "2",
            "--run-config",
            f"{run_config} run-name='deployed'",
        )
    )
    simulated = run_folder(
        run_module(
            "flower_app.simulation",
            "--num-supernodes",
            "2",
            "--run-config",
            f"{run_config} run-name='simulated'",
        )
    )
    # Assert: the same messages, bytes, statuses and accuracy; nothing left running
    assert (deployed / "bandwidth.csv").read_bytes() == (simulated / "bandwidth.csv").read_bytes()
    deployed_rounds, simulated_rounds = (
        pd.read_csv(folder / "rounds.csv").drop(columns="wall_s")
        for folder in (deployed, simulated)
    )
    pd.testing.assert_frame_equal(deployed_rounds, simulated_rounds)
    assert deployed_rounds["selected"].tolist() == [0, 2, 2]
    assert leftover_processes() == []
    # the modelled transport bytes are the measured ones: per node and message direction
    # within 5% (with its exact request count), and with the per-run costs (polls,
    # heartbeats, bundle) every byte each node's connection carried, within 2%
    per_message, whole = check(deployed)
    assert len(per_message) == 4 and len(whole) == 2
    assert (per_message["requests_logged"] == per_message["requests_measured"]).all()
    assert per_message["ratio"].between(0.95, 1.05).all(), per_message.to_string()
    assert whole["ratio"].between(0.98, 1.02).all(), whole.to_string()
    # a second witness: the SuperLink's own count of the run's traffic (`flwr ls`), within 1%
    counter = flower_counter(deployed)
    assert counter["ratio"].between(0.99, 1.01).all(), counter.to_string()


def test_a_supernode_restarted_twice_gets_a_fresh_home_each_time(tmp_path, monkeypatch):
    # Prepare: a deployment's record of partition 0's node, no process started
    deployment = Deployment(tmp_path, num_supernodes=1)
    deployment.nodes[0] = (None, ["--insecure"], 9999)
    launched = []
    monkeypatch.setattr(deploy, "stop_trees", lambda processes: [])
    monkeypatch.setattr(
        deployment, "_launch_supernode", lambda pid, args, port, home: launched.append(home)
    )
    # Execute
    deployment.restart_supernode(0)
    deployment.restart_supernode(0)
    # Assert: two new, empty Flower homes (the second restart raised FileExistsError before)
    assert [home.name for home in launched] == ["supernode-0-restart-1", "supernode-0-restart-2"]
    assert all(home.is_dir() and not any(home.iterdir()) for home in launched)


# ---------------------------------------------------------------- discovery
def test_partition_reports_that_no_waiting_mends_are_named():
    assert setup_problem({5: (0, 2), 9: (1, 2)}) == ""
    assert setup_problem({5: (0, 2), 9: None}).startswith(
        "node 9 reported no partition-id and num-partitions; start each SuperNode with "
        "--node-config 'partition-id=<i> num-partitions=<n>'"
    )
    assert setup_problem({5: (1, 2), 9: (1, 2)}) == (
        "nodes 5 and 9 both have partition-id=1; give each SuperNode its own"
    )
    assert setup_problem({5: (2, 2)}) == (
        "node 5 has partition-id=2, outside 0..1 (num-partitions=2)"
    )
    assert setup_problem({5: (0, 2), 9: (1, 3)}).startswith(
        "the nodes disagree on num-partitions ([2, 3])"
    )
    assert missing_partitions({5: (0, 4), 9: (2, 4)}) == [1, 3]
    assert missing_partitions({}) == []


class LateGrid(FakeGrid):
    """Partition 2's node joins only after the first query round."""

    def __init__(self) -> None:
        super().__init__(3)
        self.calls = 0

    def get_node_ids(self):
        self.calls += 1
        nodes = list(self.partition_of_node)
        return nodes if self.calls > 6 else nodes[:2]


def test_discovery_waits_for_a_node_that_joins_late(flat_config, tmp_path):
    strategy = BandwidthFedAvg(parse(flat_config), Recorder(tmp_path / "run"))
    assert strategy.discover_partitions(LateGrid()) == 3
    assert strategy.directory.node_of == {0: 1000, 1: 1007, 2: 1014}
    rows = read_rows(strategy.recorder)
    assert [row["partition_id"] for row in rows] == ["0", "0", "1", "1", "2", "2"]


def test_discovery_names_the_missing_partition_at_the_deadline(flat_config, tmp_path, monkeypatch):
    class GapGrid(FakeGrid):  # partitions 0 and 2 of 3: partition 1 never comes
        def __init__(self) -> None:
            super().__init__(3)
            del self.partition_of_node[1007]

    monkeypatch.setattr(discovery, "DISCOVERY_TIMEOUT_S", 0.0)
    strategy = BandwidthFedAvg(parse(flat_config), Recorder(tmp_path / "run"))
    with pytest.raises(DiscoveryError, match="^no node has partition-id 1 after 0 s"):
        strategy.discover_partitions(GapGrid())


def test_discovery_rejects_a_node_without_node_config_before_logging_it(flat_config, tmp_path):
    class UnconfiguredGrid(FakeGrid):
        def send_and_receive(self, messages, timeout=None):
            replies = super().send_and_receive(messages, timeout)
            node_1007 = next(m for m in messages if m.metadata.dst_node_id == 1007)
            empty = Message(RecordDict({keys.METRICS: MetricRecord()}), reply_to=node_1007)
            return [r for r in replies if r.metadata.src_node_id != 1007] + [empty]

    strategy = BandwidthFedAvg(parse(flat_config), Recorder(tmp_path / "run"))
    with pytest.raises(DiscoveryError, match="^node 1007 reported no partition-id"):
        strategy.discover_partitions(UnconfiguredGrid(3))
    assert read_rows(strategy.recorder) == []  # no row, least of all one of partition -1


def test_a_node_the_superlink_answers_for_is_no_answer(flat_config, tmp_path, monkeypatch):
    # Prepare: a node's heartbeat lapsed, so the SuperLink replies for it with an error whose
    # source is the SuperLink's node id (1), not the node's
    strategy = BandwidthFedAvg(parse(flat_config), Recorder(tmp_path / "run"))
    grid = FakeGrid(3)
    strategy.discover_partitions(grid)
    new_node = grid.restart(1)
    grid.dead.add(new_node)
    # Execute: the next round's look at new nodes
    moved = strategy.directory.refresh(grid, strategy.ledger, 1, timeout_s=1.0)
    # Assert: no answer, nothing moved, the node is not asked again; at the start of a run
    # the same node is a partition that never came
    assert moved == [] and new_node in strategy.directory.strangers
    assert strategy.directory.node_of[1] == 1007
    monkeypatch.setattr(discovery, "DISCOVERY_TIMEOUT_S", 0.0)
    fresh = BandwidthFedAvg(parse(flat_config), Recorder(tmp_path / "fresh"))
    with pytest.raises(DiscoveryError, match="^no node has partition-id 1 after 0 s"):
        fresh.discover_partitions(grid)


def test_a_second_online_node_of_one_partition_does_not_take_it_over(flat_config, tmp_path):
    # Prepare: partition 2's node is online; another node reports partition 2 as well
    strategy = BandwidthFedAvg(parse(flat_config), Recorder(tmp_path / "run"))
    grid = FakeGrid(3)
    strategy.discover_partitions(grid)
    grid.partition_of_node[9000] = 2
    # Execute: two rounds' looks at new nodes
    moved = [strategy.directory.refresh(grid, strategy.ledger, r, 1.0) for r in (1, 2)]
    # Assert: the partition stays with its node (it flipped between the two every round),
    # the second node was asked once; once the first node is offline, the second takes over
    assert moved == [[], []] and strategy.directory.node_of[2] == 1014
    queries = [r for r in read_rows(strategy.recorder) if r["phase"] == "query"]
    assert len([r for r in queries if r["round"] in ("1", "2")]) == 2  # one query, its reply
    del grid.partition_of_node[1014]
    assert strategy.directory.refresh(grid, strategy.ledger, 3, 1.0) == [2]
    assert strategy.directory.node_of[2] == 9000


def test_discovery_reports_a_node_whose_query_failed(flat_config, tmp_path):
    class FailingGrid(FakeGrid):
        def send_and_receive(self, messages, timeout=None):
            return [Message(Error(0, "boom"), reply_to=m) for m in self.push(messages)]

    strategy = BandwidthFedAvg(parse(flat_config), Recorder(tmp_path / "run"))
    with pytest.raises(DiscoveryError, match="failed the partition-id query: boom"):
        strategy.discover_partitions(FailingGrid(2))


# ---------------------------------------------------------------- what nodes get and read
@pytest.mark.parametrize(
    ("node_config", "expected"),
    [
        ({keys.PARTITION_ID: 2, keys.NUM_PARTITIONS: 3}, {"partition-id": 2, "num-partitions": 3}),
        ({}, {}),  # no node config: an empty answer that the server names, never a crash
    ],
)
def test_a_client_answers_the_query_with_its_node_config(flat_config, node_config, expected):
    app = make_client_app(flat_config)
    query = Message(RecordDict(), dst_node_id=1, message_type=MessageType.QUERY)
    reply = app(query, Context(1, 1, node_config, RecordDict(), {}))
    answer = dict(reply.content[keys.METRICS])
    assert set(CLIENT_KEYS) <= set(
        answer
    )  # the wire mod's own measurement, which the server removes
    assert {key: value for key, value in answer.items() if key not in CLIENT_KEYS} == expected


def test_a_client_ignores_the_servers_trace_file_and_output_dir(flat_config):
    flat_config |= {
        "net.channel": "trace",
        "net.trace-file": "/nowhere/trace.csv",
        "output-dir": "",
    }
    with pytest.raises(ConfigError, match="output-dir=''"):
        parse(flat_config)
    assert parse(flat_config, server=False).net.trace_file == "/nowhere/trace.csv"


def test_the_app_bundle_holds_the_packages_alone():
    names = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(REPO))).namelist()
    tops = {name.split("/")[0] for name in names}
    packages = {"flower_app", "experiment", "strategies", "mods", "protocol", "ledger"}
    assert tops == {".info", "pyproject.toml", "fedcodec", "netsim"} | packages
    assert "flower_app/client_app.py" in names and "fedcodec/stc.py" in names


def test_run_config_travels_as_toml_with_quotes_intact():
    flat = {"run-name": "it's", "stc.p-up": 0.1, "stc.accumulate-up": False, "seed": 3}
    text = tomli_w.dumps(unflatten_dict(flat))
    assert tomllib.loads(text) == {
        "run-name": "it's",
        "stc": {"p-up": 0.1, "accumulate-up": False},
        "seed": 3,
    }


# ---------------------------------------------------------------- TLS and node keys
def test_tls_files_chain_to_the_ca_and_name_the_hosts(tmp_path):
    ca_path, cert_path, key_path = write_tls_files(tmp_path, ["127.0.0.1", "node.example"])
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["node.example"]
    assert key_path.stat().st_mode & 0o777 == 0o600


def test_a_strict_x509_client_completes_the_handshake(tmp_path):
    # Prepare: the SuperLink's files, a server context with them, a client that verifies
    # strictly (Python 3.13's default flag: key identifiers and key usage required)
    ca_path, cert_path, key_path = write_tls_files(tmp_path, ["127.0.0.1"])
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_path, key_path)
    client_context = ssl.create_default_context(cafile=str(ca_path))
    client_context.verify_flags |= ssl.VERIFY_X509_STRICT
    with socket.create_server((LOOPBACK, 0)) as server:
        port = server.getsockname()[1]

        def serve() -> None:
            connection, _ = server.accept()
            with (
                contextlib.suppress(ssl.SSLError, OSError),
                server_context.wrap_socket(connection, server_side=True) as tls,
            ):
                tls.sendall(b"ok")

        threading.Thread(target=serve, daemon=True).start()
        # Execute
        with (
            socket.create_connection((LOOPBACK, port), timeout=10) as raw,
            client_context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            received = tls.recv(2)
    # Assert
    assert received == b"ok"


def test_node_keys_are_openssh_ecdsa(tmp_path):
    private, public = write_node_key(tmp_path, "supernode-0")
    key = load_ssh_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")


# ---------------------------------------------------------------- the transport byte meter
@contextlib.contextmanager
def repeating_server(times: int):
    """A loopback server that answers every read with `times` copies of it; yields its port."""
    with socket.create_server((LOOPBACK, 0)) as server:

        def serve() -> None:
            connection, _ = server.accept()
            with connection:
                while data := connection.recv(4096):
                    connection.sendall(data * times)

        threading.Thread(target=serve, daemon=True).start()
        yield server.getsockname()[1]


def send_through(port: int, chunks: list[bytes], times: int) -> None:
    """Send each chunk to `port` and check that `times` copies of it come back."""
    with socket.create_connection((LOOPBACK, port), timeout=10) as client:
        for chunk in chunks:
            client.sendall(chunk)
            received = b""
            while len(received) < times * len(chunk):
                received += client.recv(4096)
            assert received == chunk * times


def test_byte_meter_forwards_and_counts_each_way():
    # Prepare: a loopback server that answers every request with twice its bytes
    with repeating_server(2) as port:
        meter = ByteMeter(port)
        try:
            # Execute: 3 requests of 1,000, 10 and 1 bytes through the meter
            send_through(meter.port, [b"x" * size for size in (1000, 10, 1)], 2)
        finally:
            meter.close()
    # Assert: 1,011 bytes up, 2,022 down
    assert (meter.up_bytes, meter.down_bytes) == (1011, 2022)


def test_byte_meter_keeps_forwarding_a_stream_it_cannot_parse(caplog):
    # Prepare: an echo server, a meter that splits HTTP, a request whose length is no number
    bad = b"POST /v1/fleet/x HTTP/1.1\r\ncontent-length: many\r\n\r\n"
    with repeating_server(1) as port:
        meter = ByteMeter(port, parse_http=True)
        try:
            # Execute: the bad request, then 100 more bytes
            send_through(meter.port, [bad, b"y" * 100], 1)
        finally:
            meter.close()
    # Assert: everything forwarded and counted, one parse error logged, no exchange split
    assert meter.up_bytes == len(bad) + 100 and meter.parse_errors >= 1
    assert "HTTP parse error" in caplog.text and meter.exchanges == []


# ---------------------------------------------------------------- time bounds
def test_a_round_waits_round_timeout_s_then_logs_the_silent_clients(flat_config, tmp_path):
    # Prepare: nodes that answer the partition query, then never a train message (hung)
    class HungGrid(FakeGrid):
        def __init__(self) -> None:
            super().__init__(4)
            self.timeouts: list[float | None] = []

        def send_and_receive(self, messages, timeout=None):
            messages = list(messages)
            if messages and messages[0].metadata.message_type == MessageType.QUERY:
                return super().send_and_receive(messages, timeout)
            self.timeouts.append(timeout)
            return []

    grid = HungGrid()
    # Execute
    run_dir = run_federation(grid, flat_config | {"round-timeout-s": 2.5})
    # Assert: each phase waited 2.5 s (Flower asks for train and evaluate replies each round,
    # evaluate with no message), both messages down of a round are `timeout`, the model kept
    assert grid.timeouts == [2.5] * 4
    train = pd.read_csv(run_dir / "bandwidth.csv").query("phase == 'train'")
    assert train["direction"].tolist() == ["down"] * 4
    assert set(train["status"]) == {"timeout"}
    summary = pd.read_json(run_dir / "summary.json", typ="series")
    assert summary["delivered_updates"] == 0
    rounds = pd.read_csv(run_dir / "rounds.csv")
    assert rounds["test_accuracy"].nunique() == 1  # the initial model, kept

"""Run an experiment on Flower's deployment engine: a SuperLink and N SuperNodes on this machine.

Every process listens on a free loopback port and keeps its state in a Flower home of its own
under `.flwr/deploy-*/`; SuperNode i gets the node config `partition-id=i num-partitions=N`.
The experiment runs with `flwr run .` over an explicit connection (never Flower's default
one) and writes the usual run folder, plus `transport.csv`: per SuperNode and kind of HTTP
request, the bytes its TCP connections to the SuperLink carried each way over the whole run
(counted by a forwarder between the two), which it sets against the transport bytes that
bandwidth.csv logged (flower_app.transport_check). Every process is stopped by pid when the
run ends, fails, or is interrupted (Ctrl-C, SIGTERM).

    python -m flower_app.deploy --supernodes 3 --run-config "model='logistic'"
    python -m flower_app.deploy --supernodes 3 --tls          # TLS end to end
    python -m flower_app.deploy --supernodes 3 --tls --auth   # and SuperNode authentication
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

from experiment.config import ConfigError
from flower_app.byte_meter import EXCHANGE_COLUMNS, ByteMeter
from flower_app.certificates import write_node_key, write_tls_files
from flower_app.launch import (
    CONNECTION,
    command_line,
    flwr_run,
    start_superlink,
    validated_run_config,
    write_connection,
)
from flower_app.processes import (
    LOOPBACK,
    flower_command,
    flower_env,
    free_port,
    new_home,
    processes_under,
    remove_home,
    start_daemon,
    start_watchdog,
    stop_trees,
)
from flower_app.simulation import parse_run_config
from flower_app.transport_check import FLOWER_TRAFFIC, print_check

TRANSPORT_COLUMNS = ["partition_id", "request", "requests", "up_bytes", "down_bytes"]


@dataclass
class Deployment:
    """A SuperLink and its SuperNodes on loopback; `stop()` ends every process it started.

    Each SuperNode reaches the SuperLink through a `ByteMeter` of its own, which counts the
    node's transport bytes each way.
    """

    home: Path
    num_supernodes: int
    tls: bool = False
    auth: bool = False
    started: list[psutil.Process] = field(default_factory=list)
    meters: list[ByteMeter] = field(default_factory=list)
    nodes: dict[int, tuple[psutil.Process, list[str], int]] = field(default_factory=dict)

    def start(self) -> None:
        """Start the SuperLink, register the nodes' keys (auth), start the SuperNodes."""
        self.started.append(start_watchdog(self.home))
        env = flower_env(self.home)
        superlink_args, node_args, connection = self._security()
        superlink, port = start_superlink(
            self.home, env, superlink_args, "https" if self.tls else "http"
        )
        self.started.append(superlink)
        connection["address"] = f"{LOOPBACK}:{port}"
        write_connection(self.home, connection)
        for partition_id in range(self.num_supernodes):
            self._start_supernode(partition_id, port, node_args)

    def restart_supernode(self, partition_id: int) -> None:
        """Stop partition `partition_id`'s SuperNode by pid and start it again, as a node that
        crashed and came back: same node config and meter, a Flower home of its own, so a new
        node id and no state."""
        process, args, meter_port = self.nodes[partition_id]
        stop_trees([process])
        restarts = len(list(self.home.glob(f"supernode-{partition_id}-restart-*")))
        home = self.home / f"supernode-{partition_id}-restart-{restarts + 1}"
        home.mkdir()
        self._launch_supernode(partition_id, args, meter_port, home)

    def stop(self) -> list[int]:
        """Stop every process of the deployment, by pid, and the meters; return the pids."""
        stopped = stop_trees(self.started)
        for meter in self.meters:
            meter.close()
        return stopped + stop_trees(processes_under(self.home))

    def transport_bytes(self) -> pd.DataFrame:
        """Per SuperNode (partition id) and request path, the TCP payload bytes each way.

        Without TLS each HTTP exchange is put under the last part of its path (`pull-object`,
        `send-node-heartbeat`, ...; a `pull-messages` that found nothing is a `poll`); bytes of
        no complete exchange are `unparsed`, and with TLS everything is `tls`.
        """
        rows = []
        for partition_id, meter in enumerate(self.meters):
            exchanges = pd.DataFrame(meter.exchanges, columns=list(EXCHANGE_COLUMNS))
            exchanges["request"] = exchanges["path"].str.rsplit("/", n=1).str[-1]
            empty = (exchanges["request"] == "pull-messages") & (exchanges["down_body_bytes"] == 0)
            exchanges.loc[empty, "request"] = "poll"  # a pull that found no message
            per_request = exchanges.groupby("request", sort=True).agg(
                requests=("path", "size"),
                up_bytes=("up_bytes", "sum"),
                down_bytes=("down_bytes", "sum"),
            )
            rest = {
                "up_bytes": meter.up_bytes - int(per_request["up_bytes"].sum()),
                "down_bytes": meter.down_bytes - int(per_request["down_bytes"].sum()),
            }
            for request, row in per_request.iterrows():
                rows.append({"partition_id": partition_id, "request": request, **row})
            if rest["up_bytes"] or rest["down_bytes"]:
                leftover = "unparsed" if meter.parse_http else "tls"
                rows.append(
                    {"partition_id": partition_id, "request": leftover, "requests": 0, **rest}
                )
        return pd.DataFrame(rows, columns=TRANSPORT_COLUMNS)

    def _security(self) -> tuple[list[str], list[str], dict[str, Any]]:
        """SuperLink arguments, SuperNode arguments and the `flwr` connection (no address)."""
        if not self.tls:
            return ["--insecure"], ["--insecure"], {"insecure": True}
        ca, cert, key = write_tls_files(self.home / "certs", ["127.0.0.1", "localhost"])
        superlink = ["--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert)]
        superlink += ["--ssl-keyfile", str(key)]
        if self.auth:
            superlink.append("--enable-supernode-auth")
        return superlink, ["--root-certificates", str(ca)], {"root-certificates": str(ca)}

    def _start_supernode(self, partition_id: int, superlink_port: int, args: list[str]) -> None:
        node_home = self.home / f"supernode-{partition_id}"
        node_home.mkdir()
        if self.auth:
            private, public = write_node_key(self.home / "certs", node_home.name)
            self._register(public)
            args = [*args, "--auth-supernode-private-key", str(private)]
        meter = ByteMeter(superlink_port, parse_http=not self.tls)
        self.meters.append(meter)
        self._launch_supernode(partition_id, args, meter.port, node_home)

    def _launch_supernode(
        self, partition_id: int, args: list[str], meter_port: int, home: Path
    ) -> None:
        """Start partition `partition_id`'s SuperNode with its Flower home in `home`, reaching
        the SuperLink through the meter on `meter_port`."""
        command = [
            flower_command("flower-supernode"),
            *args,
            "--superlink",
            f"{LOOPBACK}:{meter_port}",
            "--port",
            str(free_port()),
            "--node-config",
            f"partition-id={partition_id} num-partitions={self.num_supernodes}",
        ]
        process = start_daemon(command, flower_env(home), home / "supernode.log")
        self.started.append(process)
        self.nodes[partition_id] = (process, args, meter_port)

    def _register(self, public_key: Path) -> None:
        command = [flower_command("flwr"), "supernode", "register", str(public_key), CONNECTION]
        subprocess.run(
            command, env=flower_env(self.home), check=True, capture_output=True, timeout=60
        )


def run_deployed(
    overrides: dict[str, Any], num_supernodes: int, tls: bool = False, auth: bool = False
) -> Path:
    """Validate, deploy on loopback, run the experiment, stop everything; the run folder."""
    if auth and not tls:
        raise ConfigError("--auth needs --tls: Flower authenticates SuperNodes over TLS only")
    run_config = validated_run_config(overrides, num_supernodes)
    deployment = Deployment(new_home("deploy"), num_supernodes, tls, auth)
    try:
        deployment.start()
        run_dir = flwr_run(deployment.home, flower_env(deployment.home), run_config)
        write_flower_traffic(deployment.home, run_dir)
    finally:
        deployment.stop()
    deployment.transport_bytes().to_csv(run_dir / "transport.csv", index=False)
    remove_home(deployment.home)  # kept when the run failed: its logs are there
    if not tls:
        print_check(run_dir)
    return run_dir


def write_flower_traffic(home: Path, run_dir: Path) -> None:
    """The SuperLink's own count of the run's traffic (`flwr ls`), into flower_traffic.json."""
    run_id = json.loads((run_dir / "summary.json").read_text())["flower_run_id"]
    command = [flower_command("flwr"), "ls", CONNECTION, "--run-id", str(run_id)]
    listed = subprocess.run(
        [*command, "--format", "json"],
        env=flower_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    traffic = json.loads(listed.stdout)["runs"][0]["network-traffic"]
    (run_dir / FLOWER_TRAFFIC).write_text(json.dumps(traffic, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supernodes", type=int, default=3)
    parser.add_argument("--run-config", default="", help="k=v pairs, as for `flwr run`")
    parser.add_argument("--tls", action="store_true", help="TLS with a self-signed CA")
    parser.add_argument("--auth", action="store_true", help="SuperNode authentication (TLS)")
    args = parser.parse_args(argv)
    return command_line(
        lambda: run_deployed(
            parse_run_config(args.run_config), args.supernodes, args.tls, args.auth
        )
    )


if __name__ == "__main__":
    sys.exit(main())

"""Run the app with `flwr run .` on a simulation SuperLink of its own, then clean up.

Each launch gets a Flower home of its own under `.flwr/` and a SuperLink on a free loopback
port, reached through an explicit connection written into that home's `config.toml`: two
launches (two clones, or a test suite beside an experiment) never meet on Flower's shared
default port 39091. The config is validated first (one line, exit 2); the run-config travels
as a TOML file; every process the launch started is stopped by pid when it ends, also on
Ctrl-C and SIGTERM; the exit code is non-zero unless the run folder holds a summary.

    python -m flower_app.launch --num-supernodes 20 --run-config "num-server-rounds=3"
    python -m flower_app.launch --stop      # what a killed launch left behind
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import tomli_w
from flwr.common.config import unflatten_dict

from experiment.config import PYPROJECT, ConfigError, resolve
from flower_app.checkpoint import resume_clients, resume_overrides
from flower_app.preflight import preflight
from flower_app.processes import (
    FLWR_ROOT,
    LOOPBACK,
    ProcessStartError,
    flower_command,
    flower_env,
    free_port,
    launcher_alive,
    new_home,
    processes_under,
    remove_home,
    start_daemon,
    start_watchdog,
    stop_trees,
    terminate_with_parent,
    wait_until_healthy,
)
from flower_app.simulation import finished_run, parse_run_config, run_command

REPO = PYPROJECT.parent
CONNECTION = "launch"  # the name of the connection in a launch's config.toml
PORT_ATTEMPTS = 3


def validated_run_config(overrides: dict[str, Any], num_supernodes: int) -> dict[str, Any]:
    """Check everything before anything starts; the overrides `flwr run` gets, run folder fixed."""
    _, run_dir = preflight(resolve(overrides), num_supernodes)
    return overrides | {"output-dir": str(run_dir.parent), "run-name": run_dir.name}


def start_superlink(
    home: Path, env: dict[str, str], security: list[str], scheme: str = "http"
) -> tuple[psutil.Process, int]:
    """Start a SuperLink on a free loopback port and wait until it answers; (process, port).

    A port can be taken between choosing and binding it: the start is tried again on another.
    """
    for _ in range(PORT_ATTEMPTS - 1):
        with contextlib.suppress(ProcessStartError):
            return _start_superlink_once(home, env, security, scheme)
    return _start_superlink_once(home, env, security, scheme)


def _start_superlink_once(
    home: Path, env: dict[str, str], security: list[str], scheme: str
) -> tuple[psutil.Process, int]:
    port = free_port()
    command = [flower_command("flower-superlink"), *security, "--isolation", "subprocess"]
    command += ["--host", LOOPBACK, "--port", str(port)]
    command.append("--disable-runtime-dependency-installation")
    log_path = home / "superlink.log"
    superlink = start_daemon(command, env, log_path)
    try:
        wait_until_healthy(superlink, f"{scheme}://{LOOPBACK}:{port}/health", log_path)
    except ProcessStartError:
        stop_trees([superlink])
        raise
    return superlink, port


def write_connection(home: Path, connection: dict[str, Any]) -> None:
    """Make `connection` the default SuperLink connection of the Flower home `home`."""
    config = {"superlink": {"default": CONNECTION, CONNECTION: connection}}
    (home / "config.toml").write_text(tomli_w.dumps(config))


def flwr_run(home: Path, env: dict[str, str], run_config: dict[str, Any], *extra: str) -> Path:
    """`flwr run . --stream` over the home's connection; the run folder, or RuntimeError."""
    config_file = home / "run-config.toml"
    config_file.write_text(tomli_w.dumps(unflatten_dict(run_config)))
    command = [flower_command("flwr"), "run", str(REPO), CONNECTION, "--stream"]
    command += ["--run-config", str(config_file), *extra]
    subprocess.run(command, env=env, cwd=REPO, check=False, preexec_fn=terminate_with_parent)
    return finished_run(Path(run_config["output-dir"]) / run_config["run-name"])


def run_flwr(
    overrides: dict[str, Any], num_supernodes: int, client_cpus: int, client_gpus: float = 0.0
) -> Path:
    """Validate, run on a simulation SuperLink of this launch's own, stop it; the run folder.

    `client_gpus` is the GPU fraction Ray reserves per client (0.2: five clients share one).
    """
    run_config = validated_run_config(overrides, num_supernodes)
    if client_cpus < 1:
        raise ConfigError(f"client-cpus={client_cpus} is out of range; allowed: integer >= 1")
    if not 0 <= client_gpus <= 1:
        raise ConfigError(f"client-gpus={client_gpus} is out of range; allowed: [0, 1]")
    home = new_home("launch")
    env = flower_env(home)
    started = [start_watchdog(home)]
    try:
        superlink, port = start_superlink(home, env, ["--insecure", "--simulation"])
        started.append(superlink)
        write_connection(home, {"address": f"{LOOPBACK}:{port}", "insecure": True})
        federation = (
            f"num-supernodes={num_supernodes} client-resources-num-cpus={client_cpus} "
            f"client-resources-num-gpus={client_gpus}"
        )
        run_dir = flwr_run(home, env, run_config, "--federation-config", federation)
    finally:
        stop_trees(started)
        stop_trees(processes_under(home))
    remove_home(home)  # kept when the run failed: its logs are there
    return run_dir


def stop_leftovers() -> tuple[list[int], list[Path]]:
    """Stop what killed launches of this checkout left running (by FLWR_HOME / RAY_TMPDIR);
    the pids stopped, and the homes skipped because their launcher still runs."""
    homes = sorted(FLWR_ROOT.iterdir()) if FLWR_ROOT.exists() else []
    running = [home for home in homes if launcher_alive(home)]
    left = [home for home in homes if home not in running]
    return stop_trees([process for home in left for process in processes_under(home)]), running


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that `finally` blocks stop what was started."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def command_line(action: Callable[[], Path]) -> int:
    """Run `action` as a command: config errors exit 2; nothing stays running on any exit."""
    exit_on_sigterm()
    try:
        return run_command(action)
    except KeyboardInterrupt:
        print("interrupted; every process this launch started was stopped", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    """Command line of the launcher (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-config", default="", help="k=v pairs, as for `flwr run`")
    parser.add_argument("--num-supernodes", type=int, help="default 20; a resumed run's own")
    parser.add_argument("--client-cpus", type=int, default=1)
    parser.add_argument("--client-gpus", type=float, default=0.0, help="GPU fraction per client")
    parser.add_argument("--stop", action="store_true", help="stop leftover Flower daemons")
    parser.add_argument("--resume", type=Path, help="a killed run's folder: go on from there")
    args = parser.parse_args(argv)
    if args.stop:
        stopped, running = stop_leftovers()
        print(f"stopped {len(stopped)} Flower process(es)" if stopped else "nothing to stop")
        for home in running:
            print(f"left running: the launch of {home} (its launcher is alive)")
        return 0
    return command_line(
        lambda: run_flwr(
            resume_overrides(args.resume) if args.resume else parse_run_config(args.run_config),
            resume_clients(args.resume, args.num_supernodes),
            args.client_cpus,
            args.client_gpus,
        )
    )


if __name__ == "__main__":
    sys.exit(main())

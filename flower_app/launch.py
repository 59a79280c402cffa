"""Run the app with `flwr run .` against a local simulated federation, then clean up.

`flwr run` starts a local SuperLink (and SuperExec) in the background and leaves them
running, exits 0 even when the run failed, and reports a config typo as a stack trace from
inside the ServerApp. This launcher validates the config first (one line, exit 2), runs
`flwr run . --stream` with FLWR_HOME and RAY_TMPDIR inside the checkout, stops the
processes it started, and exits non-zero unless the run folder holds a summary.

    python -m flower_app.launch --num-supernodes 20 --run-config "num-server-rounds=3"
    python -m flower_app.launch --stop
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flower_app.config import PYPROJECT, ConfigError, default_run_name, parse, resolve
from flower_app.data import load_dataset
from flower_app.simulation import parse_run_config, run_command
from strategies.network import check_network

REPO = PYPROJECT.parent


def flower_env(repo: Path = REPO) -> dict[str, str]:
    """Environment for `flwr`: state inside the checkout, offline-friendly, no runtime installs."""
    env = dict(os.environ)
    env.update(
        {
            "FLWR_HOME": str(repo / ".flwr"),
            "RAY_TMPDIR": str(repo / ".ray"),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    return env


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("'", "") + "'"
    return repr(value)


def flower_processes(flwr_home: Path, ray_tmpdir: Path | None = None) -> list[int]:
    """Pids of this checkout's Flower daemons and Ray workers (never this process or its parents).

    A process counts when its command line names `flwr_home`, or its environment points
    FLWR_HOME or RAY_TMPDIR there (Ray's actors), or it is a Ray agent (`ray::...`) working
    in the folder that holds `ray_tmpdir` (Ray's agents inherit neither variable).
    """
    markers = [f"FLWR_HOME={flwr_home}".encode()]
    if ray_tmpdir is not None:
        markers.append(f"RAY_TMPDIR={ray_tmpdir}".encode())
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        if int(proc.name) in _self_and_ancestors():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = set((proc / "environ").read_bytes().split(b"\0"))
            cwd = (proc / "cwd").resolve()
        except OSError:
            continue
        ray_agent = (
            ray_tmpdir is not None
            and cmdline.startswith(b"ray::")
            and (cwd == ray_tmpdir.parent.resolve())
        )
        if str(flwr_home).encode() in cmdline or environ.intersection(markers) or ray_agent:
            pids.append(int(proc.name))
    return pids


def _self_and_ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def stop_flower(env: dict[str, str]) -> list[int]:
    """Stop this checkout's Flower daemons and Ray workers; return their pids."""
    return stop_pids(flower_processes(Path(env["FLWR_HOME"]), Path(env["RAY_TMPDIR"])))


def stop_pids(pids: list[int], grace_s: float = 5.0) -> list[int]:
    """SIGTERM the pids, wait up to `grace_s`, then SIGKILL those still alive."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    return pids


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def run_flwr(overrides: dict, num_supernodes: int, client_cpus: int) -> Path:
    """Validate, run `flwr run . --stream`, stop the daemons, and return the run folder."""
    flat = resolve(overrides)
    config = parse(flat)
    if num_supernodes < 1 or client_cpus < 1:
        raise ConfigError("num-supernodes and client-cpus must be integers >= 1")
    load_dataset(config.dataset, config.data_dir, config.seed)  # fails fast when missing
    check_network(config.net, config.seed, num_supernodes)
    fixed = {
        "output-dir": str(Path(config.output_dir).resolve()),
        "run-name": default_run_name(config),
    }
    run_config = " ".join(
        f"{key}={_toml_value(value)}" for key, value in (overrides | fixed).items()
    )
    command = [
        str(Path(sys.executable).parent / "flwr"),
        "run",
        str(REPO),
        "--stream",
        "--run-config",
        run_config,
        "--federation-config",
        f"num-supernodes={num_supernodes} client-resources-num-cpus={client_cpus}",
    ]
    env = flower_env()
    home, ray_tmpdir = Path(env["FLWR_HOME"]), Path(env["RAY_TMPDIR"])
    already_running = set(flower_processes(home, ray_tmpdir))
    try:
        subprocess.run(command, env=env, cwd=REPO, check=False)
    finally:
        stop_pids(sorted(set(flower_processes(home, ray_tmpdir)) - already_running))
    run_dir = Path(fixed["output-dir"]) / fixed["run-name"]
    if not (run_dir / "summary.json").exists():
        raise RuntimeError(f"the run did not finish (no {run_dir}/summary.json); see the log")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    """Command line of the launcher (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-config", default="", help="k=v pairs, as for `flwr run`")
    parser.add_argument("--num-supernodes", type=int, default=20)
    parser.add_argument("--client-cpus", type=int, default=1)
    parser.add_argument("--stop", action="store_true", help="stop leftover Flower daemons")
    args = parser.parse_args(argv)
    if args.stop:
        stopped = stop_flower(flower_env())
        print(f"stopped {len(stopped)} Flower process(es)" if stopped else "nothing to stop")
        return 0
    return run_command(
        lambda: run_flwr(parse_run_config(args.run_config), args.num_supernodes, args.client_cpus)
    )


if __name__ == "__main__":
    sys.exit(main())

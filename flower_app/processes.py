"""Start and stop the Flower daemons of one launch: free ports, health waits, stop by pid.

Every process a launch starts is held as a `psutil.Process`; stopping one stops the whole
tree under it (a SuperLink starts a SuperExec, which starts the ServerApp or the
simulation and its Ray workers), first with SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

LOOPBACK = "127.0.0.1"
HEALTH_TIMEOUT_S = 30.0


class ProcessStartError(RuntimeError):
    """A Flower daemon exited or never answered while starting."""


def free_port() -> int:
    """A TCP port on the loopback address that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def ray_tmpdir(home: Path) -> Path:
    """Ray's folder for the Flower home `home`: short, since Ray's socket paths must be."""
    digest = hashlib.sha1(str(home.resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"flray-{digest}"


def flower_env(home: Path) -> dict[str, str]:
    """Environment for Flower's commands: state in `home`, offline, no runtime installs."""
    env = dict(os.environ)
    env.update(
        {
            "FLWR_HOME": str(home),
            "RAY_TMPDIR": str(ray_tmpdir(home)),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    return env


def flower_command(name: str) -> str:
    """The path of one of Flower's commands in this environment (`flwr`, `flower-superlink`)."""
    return str(Path(sys.executable).parent / name)


def start_daemon(command: list[str], env: dict[str, str], log_path: Path) -> psutil.Process:
    """Start `command` in a session of its own, its output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return psutil.Process(popen.pid)


def wait_until_healthy(
    process: psutil.Process, url: str, log_path: Path, timeout_s: float = HEALTH_TIMEOUT_S
) -> None:
    """Poll `url` until it answers 200; fail when `process` exits or time runs out."""
    verify = False  # a self-signed certificate is checked by Flower itself, not here
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.is_running() or process.status() == psutil.STATUS_ZOMBIE:
            raise ProcessStartError(f"{process.name()} exited while starting; see {log_path}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=0.5, verify=verify).is_success:
                return
        time.sleep(0.2)
    raise ProcessStartError(f"nothing answered {url} within {timeout_s:.0f} s; see {log_path}")


def stop_trees(processes: list[psutil.Process], grace_s: float = 5.0) -> list[int]:
    """Stop each process and everything under it; return the pids that were stopped."""
    tree: list[psutil.Process] = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            tree += [process, *process.children(recursive=True)]
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return [process.pid for process in tree]


def processes_under(home: Path) -> list[psutil.Process]:
    """Processes whose FLWR_HOME lies in `home` or RAY_TMPDIR is its Ray folder.

    What a killed launch left behind: Flower's daemons inherit FLWR_HOME, Ray's workers
    RAY_TMPDIR. Never this process or its parents.
    """
    prefix, ray_dir = str(home.resolve()), str(ray_tmpdir(home))
    own = {os.getpid(), *(parent.pid for parent in psutil.Process().parents())}
    found = []
    for process in psutil.process_iter():
        if process.pid in own:
            continue
        with contextlib.suppress(psutil.Error):
            environ = process.environ()
            flwr_home = environ.get("FLWR_HOME", "")
            in_home = flwr_home == prefix or flwr_home.startswith(prefix + os.sep)
            if in_home or environ.get("RAY_TMPDIR") == ray_dir:
                found.append(process)
    return found

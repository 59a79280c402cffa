"""Start and stop the Flower daemons of one launch: free ports, health waits, stop by pid.

Every process a launch starts is held as a `psutil.Process`; stopping one stops the whole
tree under it (a SuperLink starts a SuperExec, which starts the ServerApp or the
simulation and its Ray workers), first with SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from experiment.config import PYPROJECT

FLWR_ROOT = PYPROJECT.parent / ".flwr"  # every launch's Flower home lies below
LOOPBACK = "127.0.0.1"
HEALTH_TIMEOUT_S = 30.0
PR_SET_PDEATHSIG = 1  # prctl option of <sys/prctl.h>
WATCHED_VARIABLES = ("FLWR_HOME", "RAY_TMPDIR")  # how a launch's processes are recognised
LAUNCHER = "launcher.json"  # in a launch's home: the pid and start time of its launcher


class ProcessStartError(RuntimeError):
    """A Flower daemon exited or never answered while starting."""


def free_port() -> int:
    """A TCP port on the loopback address that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def new_home(kind: str) -> Path:
    """A fresh Flower home for one launch: `.flwr/<kind>-<pid>-<ns>`, naming its launcher."""
    home = FLWR_ROOT / f"{kind}-{os.getpid()}-{time.monotonic_ns()}"
    home.mkdir(parents=True)
    launcher = psutil.Process()
    (home / LAUNCHER).write_text(
        json.dumps({"pid": launcher.pid, "started": launcher.create_time()})
    )
    return home


def launcher_alive(home: Path) -> bool:
    """Whether the process that made `home` still runs (same pid and start time)."""
    try:
        launcher = json.loads((home / LAUNCHER).read_text())
        process = psutil.Process(int(launcher["pid"]))
        same = process.create_time() == float(launcher["started"])
        return same and process.status() != psutil.STATUS_ZOMBIE
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return False


def remove_home(home: Path) -> None:
    """Delete a launch's Flower home and its Ray folder."""
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(ray_tmpdir(home), ignore_errors=True)


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


def start_daemon(
    command: list[str], env: dict[str, str], log_path: Path, die_with_parent: bool = True
) -> psutil.Process:
    """Start `command` in a session of its own, its output appended to `log_path`.

    On Linux the daemon gets SIGTERM when the process that started it dies, even by SIGKILL
    (unless `die_with_parent` is False), so a killed launcher leaves no SuperLink behind.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=terminate_with_parent if die_with_parent else None,
        )
    return psutil.Process(popen.pid)


def terminate_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the parent dies (prctl)."""
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


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
    """Processes of the launch whose Flower home is `home` (never this process or its parents).

    What a killed launch left behind: Flower's daemons inherit FLWR_HOME, Ray's workers
    RAY_TMPDIR; Ray's agents clear their environment but keep their logs open in the Ray folder.
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
            if in_home or environ.get("RAY_TMPDIR") == ray_dir or _has_open_file(process, ray_dir):
                found.append(process)
    return found


def _has_open_file(process: psutil.Process, folder: str) -> bool:
    return any(file.path.startswith(folder + os.sep) for file in process.open_files())


def start_watchdog(home: Path) -> psutil.Process:
    """A process that stops everything under `home` once this process is gone (even by SIGKILL).

    What dies with the launcher through `terminate_with_parent` is its direct children; the
    rest (the ServerApp or the simulation, Ray's workers) is found by `FLWR_HOME` and
    `RAY_TMPDIR` and stopped by pid. Stop the watchdog itself when the launch ends normally.
    """
    command = [sys.executable, "-m", "flower_app.processes", str(os.getpid()), str(home)]
    env = {key: value for key, value in os.environ.items() if key not in WATCHED_VARIABLES}
    return start_daemon(command, env, home / "watchdog.log", die_with_parent=False)


def watch(launcher_pid: int, home: Path, poll_s: float = 0.5) -> None:
    """Wait until `launcher_pid` has gone, then stop every process under `home`."""
    while _alive(launcher_pid):
        time.sleep(poll_s)
    stop_trees(processes_under(home))


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


if __name__ == "__main__":
    watch(int(sys.argv[1]), Path(sys.argv[2]))

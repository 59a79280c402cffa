"""Stopping leftovers: `make stop` stops what killed launches left, never a live launch."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil

from flower_app.launch import stop_leftovers
from flower_app.processes import LAUNCHER, launcher_alive, new_home, remove_home


def test_a_home_knows_whether_its_launcher_still_runs():
    home = new_home("test")
    try:
        assert launcher_alive(home)  # this process made it
        launcher = json.loads((home / LAUNCHER).read_text())
        (home / LAUNCHER).write_text(json.dumps(launcher | {"started": 1.0}))  # pid reused
        assert not launcher_alive(home)
        (home / LAUNCHER).write_text("{not json")
        assert not launcher_alive(home)
    finally:
        remove_home(home)


def test_stop_leaves_a_live_launch_alone_and_stops_a_dead_ones_processes():
    # Prepare: a process of a launch (its FLWR_HOME in the launch's home), whose launcher is
    # this test: alive
    home = new_home("test")
    env = {"FLWR_HOME": str(home), "PATH": "/usr/bin:/bin"}
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        # Execute / Assert: the live launch is skipped
        stopped, running = stop_leftovers()
        assert child.pid not in stopped and home in running
        assert child.poll() is None
        # once its launcher is gone (a pid that no longer runs), its process is stopped
        (home / LAUNCHER).write_text(json.dumps({"pid": 2**22 + 7, "started": 1.0}))
        stopped, running = stop_leftovers()
        assert child.pid in stopped and home not in running
        assert child.wait(timeout=10) is not None
    finally:
        if psutil.pid_exists(child.pid):
            child.kill()
        remove_home(home)

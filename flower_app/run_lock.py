"""One command at a time on a run folder: an advisory lock held for the run's lifetime.

The ServerApp holds an exclusive `fcntl.flock` on `<run folder>/.lock` while it writes the
run's logs; the launchers check it before they touch a folder (`--resume`, a sweep's rerun),
so that a second command on a running run stops with one line instead of truncating its
logs or deleting its folder. The lock goes with the process that holds it, also on SIGKILL.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from experiment.config import ConfigError

LOCK = ".lock"


class RunFolderBusy(ConfigError):
    """The run folder is held by another command."""


@contextlib.contextmanager
def held(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock for the block; RunFolderBusy when another command has it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / LOCK).open("a+") as file:
        _take(file, run_dir)
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def check_free(run_dir: Path) -> None:
    """RunFolderBusy when a command holds `run_dir`'s lock now; nothing is held after."""
    if (run_dir / LOCK).is_file():
        with (run_dir / LOCK).open("a+") as file:
            _take(file, run_dir)
            fcntl.flock(file, fcntl.LOCK_UN)


def _take(file, run_dir: Path) -> None:
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = file.read().strip() or "unknown"
        raise RunFolderBusy(
            f"{run_dir} is in use by another command (pid {holder}); wait for it to end or "
            "stop it, then try again"
        ) from None

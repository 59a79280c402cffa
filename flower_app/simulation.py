"""Python API: run one experiment in-process over Flower's `run_simulation`.

`run_simulation` hands the apps an empty run-config, so the config is resolved here
(pyproject defaults + overrides), validated before anything starts, and given to the apps
through their factories.

    python -m flower_app.simulation --num-supernodes 10 --run-config "num-server-rounds=2"
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from flwr.clientapp.typing import Mod

from experiment.config import ConfigError, resolve
from experiment.dataset import DatasetError
from experiment.task import compute_device
from flower_app.checkpoint import resume_clients, resume_overrides
from flower_app.preflight import preflight
from flower_app.processes import new_home, ray_tmpdir, remove_home, start_watchdog, stop_trees

DEFAULT_GPU_FRACTION = 0.2


def run_experiment(
    overrides: dict[str, Any] | None = None,
    num_supernodes: int = 20,
    client_cpus: float = 1.0,
    client_gpus: float | None = None,
    client_mods: Sequence[Mod] = (),
) -> Path:
    """Run one experiment and return its run folder.

    Parameters
    ----------
    overrides : dict
        Run-config keys (kebab-case, as in pyproject.toml) to change.
    num_supernodes : int
        Number of simulated clients (one partition each).
    client_cpus : float
        CPUs reserved per client; with 2 cores, 1.0 runs two clients at a time.
    client_gpus : float, optional
        GPU fraction per client; defaults to 0.2 when clients train on CUDA, else 0.
    client_mods : sequence of mods
        The user's own client mods (module-level functions), innermost: they see what the
        train handler sees (`flower_app.client_app.make_client_app`).

    Raises
    ------
    ConfigError
        For a bad value, before any simulation starts.
    """
    flat = resolve(overrides)
    config, run_dir = preflight(flat, num_supernodes)
    gpus = _gpu_fraction(client_gpus, compute_device(config.device))
    flat["run-name"], flat["output-dir"] = run_dir.name, str(run_dir.parent)

    from flwr.simulation import run_simulation

    from flower_app.client_app import make_client_app
    from flower_app.server_app import make_server_app

    home = new_home("simulation")  # Ray's folder and the watchdog that ends Ray if we are killed
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ["RAY_TMPDIR"] = str(ray_tmpdir(home))
    watchdog = start_watchdog(home)
    try:
        run_simulation(
            server_app=make_server_app(flat),
            client_app=make_client_app(flat, client_mods),
            num_supernodes=num_supernodes,
            backend_config={"client_resources": {"num_cpus": client_cpus, "num_gpus": gpus}},
        )
    finally:
        stop_trees([watchdog])
        remove_home(home)
    return finished_run(run_dir)


def finished_run(run_dir: Path) -> Path:
    """`run_dir` when it holds a run that finished and trained; else a RuntimeError saying why."""
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        raise RuntimeError(f"the run did not finish (no {summary_path}); see the log above")
    if json.loads(summary_path.read_text())["delivered_updates"] == 0:
        raise RuntimeError(
            f"no round delivered an update: the model never trained; the statuses in "
            f"{run_dir / 'bandwidth.csv'} say why"
        )
    return run_dir


def _gpu_fraction(requested: float | None, device: torch.device) -> float:
    if requested is not None:
        return requested
    return DEFAULT_GPU_FRACTION if device.type == "cuda" else 0.0


def parse_run_config(text: str) -> dict[str, Any]:
    """Parse Flower's `--run-config "k=v k2='s'"` syntax (TOML values) into a dict."""
    overrides = {}
    for item in shlex.split(text, posix=False):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"'{item}' in --run-config is not key=value")
        try:
            overrides[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(
                f"{key}={value} is not a TOML value (quote strings: {key}='{value}')"
            ) from None
    return overrides


def run_command(action: Callable[[], Path]) -> int:
    """Run `action` for a command line: a config or data error is one line and exit code 2."""
    try:
        run_dir = action()
    except (ConfigError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"run folder: {run_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line: run one experiment; a config error is one line and exit code 2."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-config", default="", help="k=v pairs, as for `flwr run`")
    parser.add_argument("--num-supernodes", type=int, help="default 20; a resumed run's own")
    parser.add_argument("--client-cpus", type=float, default=1.0)
    parser.add_argument("--client-gpus", type=float, default=None)
    parser.add_argument("--resume", type=Path, help="a killed run's folder: go on from there")
    args = parser.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.INFO)
    return run_command(
        lambda: run_experiment(
            resume_overrides(args.resume) if args.resume else parse_run_config(args.run_config),
            resume_clients(args.resume, args.num_supernodes),
            args.client_cpus,
            args.client_gpus,
        )
    )


if __name__ == "__main__":
    sys.exit(main())

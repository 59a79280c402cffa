"""Run a set of experiments described in a TOML file and compare them.

    python -m flower_app.sweep sweeps/default.toml

The file (see sweeps/default.toml):

    [sweep]
    name = "default"            # the folder <output-dir>/<name>/
    num-supernodes = 10
    seeds = [42]
    target-accuracy = 0.8
    output-dir = "outputs/sweeps"

    [common]                    # run-config keys every run shares
    num-server-rounds = 10

    [[runs]]                    # one entry per setting: a name and its run-config keys
    name = "fedavg"
    strategy = "fedavg"
    num-supernodes = 20         # optional: this run's number of clients

Every run (and seed) is validated before the first one starts; a run that fails later is
reported and the sweep goes on; a run already finished in the sweep folder is reused when its
settings (run_config.json, number of clients) are the sweep's, and run again, saying which keys
changed, when they are not; a sweep that was stopped resumes where it was. The comparison
(comparison.csv, comparison.md and plots) is written into the sweep folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import tomllib
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from flwr.common.config import flatten_dict

from experiment.config import ConfigError, parse, resolve
from flower_app.checkpoint import check_resumable, load
from flower_app.plots import plot_comparison
from flower_app.report import summarize
from flower_app.run_lock import check_free

SWEEP_KEYS = {
    "name": str,
    "num-supernodes": int,
    "seeds": list,
    "target-accuracy": float,
    "output-dir": str,
}
FIXED_KEYS = ("seed", "output-dir", "run-name")  # set by the sweep for each run
FAILURE_LOG = "failure.log"  # in a failed run's folder: the traceback


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: what to run, and where."""

    name: str
    seeds: tuple[int, ...]
    target_accuracy: float
    folder: Path
    runs: dict[str, dict[str, Any]]  # run name -> run-config overrides (common included)
    clients: dict[str, int]  # run name -> its number of clients (num-supernodes)

    def jobs(self) -> list[tuple[str, int, dict[str, Any]]]:
        """(run name, seed, overrides) for every run and seed, in file order."""
        return [
            (
                name,
                seed,
                overrides
                | {
                    "seed": seed,
                    "output-dir": str(self.folder),
                    "run-name": run_folder_name(name, seed),
                },
            )
            for name, overrides in self.runs.items()
            for seed in self.seeds
        ]


def run_folder_name(name: str, seed: int) -> str:
    """The run folder of one run and seed inside the sweep folder."""
    return f"{name}-seed{seed}"


def load_sweep(path: Path) -> Sweep:
    """Read and validate a sweep file; every problem is a `ConfigError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file '{path}' does not exist")
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"sweep file '{path}' is not valid TOML: {error}") from None
    unknown = sorted(set(table) - {"sweep", "common", "runs"})
    if unknown:
        raise ConfigError(
            f"sweep file '{path}': unknown table(s) {', '.join(unknown)}; "
            "allowed: [sweep], [common], [[runs]]"
        )
    settings = _sweep_settings(path, table.get("sweep"))
    common = table.get("common", {})
    runs = table.get("runs")
    if not isinstance(runs, list) or not runs:
        raise ConfigError(f"sweep file '{path}' has no [[runs]]; give one or more")
    common = dict(common)
    default_clients = common.pop("num-supernodes", settings["num-supernodes"])
    overrides_by_name: dict[str, dict[str, Any]] = {}
    clients: dict[str, int] = {}
    for index, run in enumerate(runs, start=1):
        run = dict(run)
        name = run.pop("name", None)
        where = f"sweep file '{path}', run {index}"
        if not isinstance(name, str) or not name or "/" in name:
            raise ConfigError(f"{where}: name={name!r}; give each run a name (no '/')")
        if name in overrides_by_name:
            raise ConfigError(f"{where}: the name '{name}' is used twice")
        clients[name] = run.pop("num-supernodes", default_clients)
        if not isinstance(clients[name], int) or isinstance(clients[name], bool):
            raise ConfigError(
                f"{where} ('{name}'): num-supernodes={clients[name]!r}; allowed: >= 1"
            )
        if clients[name] < 1:
            raise ConfigError(f"{where} ('{name}'): num-supernodes={clients[name]}; allowed: >= 1")
        overrides = _flat(common, where) | _flat(run, where)
        fixed = sorted(set(overrides) & set(FIXED_KEYS))
        if fixed:
            raise ConfigError(f"{where} ('{name}'): {', '.join(fixed)} are set by the sweep")
        overrides_by_name[name] = overrides
    sweep = Sweep(
        name=settings["name"],
        seeds=tuple(settings["seeds"]),
        target_accuracy=settings["target-accuracy"],
        folder=Path(settings["output-dir"]).resolve() / settings["name"],
        runs=overrides_by_name,
        clients=clients,
    )
    for name, seed, overrides in sweep.jobs():
        try:
            parse(resolve(overrides))
        except ConfigError as error:
            raise ConfigError(f"sweep file '{path}', run '{name}' (seed {seed}): {error}") from None
    return sweep


def _sweep_settings(path: Path, settings: Any) -> dict[str, Any]:
    if not isinstance(settings, dict):
        raise ConfigError(f"sweep file '{path}' has no [sweep] table")
    unknown = sorted(set(settings) - set(SWEEP_KEYS))
    missing = sorted(set(SWEEP_KEYS) - set(settings))
    problems = [f"unknown key(s) {', '.join(unknown)}"] if unknown else []
    problems += [f"missing key(s) {', '.join(missing)}"] if missing else []
    if problems:
        raise ConfigError(
            f"sweep file '{path}', [sweep]: {'; '.join(problems)}; keys: {', '.join(SWEEP_KEYS)}"
        )
    for key, kind in SWEEP_KEYS.items():
        value = settings[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(
                f"sweep file '{path}', [sweep]: {key}={value!r} must be a {kind.__name__}"
            )
        settings[key] = value
    seeds = settings["seeds"]
    if not seeds or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds
    ):
        raise ConfigError(f"sweep file '{path}', [sweep]: seeds={seeds!r}; allowed: integers >= 0")
    if settings["num-supernodes"] < 1 or not 0 < settings["target-accuracy"] <= 1:
        raise ConfigError(
            f"sweep file '{path}', [sweep]: num-supernodes={settings['num-supernodes']}, "
            f"target-accuracy={settings['target-accuracy']}; allowed: >= 1 and (0, 1]"
        )
    return settings


def compare(
    run_dirs: dict[str, list[Path]], target_accuracy: float, baselines: dict[str, str]
) -> pd.DataFrame:
    """One row per run name: means (and spread) over its seeds' finished runs.

    Bytes are transport-level bytes sent. `baselines` maps a run to the run whose bytes its
    `x_fewer` columns divide by (FedAvg with as many clients); a run without one gets NaN
    there. `up_x_<level>` is the uplink's float32 size over what it cost at that level.
    """
    rows = []
    for name, folders in run_dirs.items():
        summaries = pd.DataFrame([summarize(folder, target_accuracy) for folder in folders])
        reached = summaries["to_target_round"].notna()
        rows.append(
            {
                "run": name,
                "seeds": len(summaries),
                "final_accuracy": summaries["final_accuracy"].mean(),
                "final_accuracy_std": summaries["final_accuracy"].std(ddof=0),
                "reached_target": f"{int(reached.sum())}/{len(summaries)}",
                "rounds_to_target": _mean_if_all(summaries["to_target_round"], reached),
                "up_bytes_to_target": _mean_if_all(summaries["to_target_up_bytes"], reached),
                "total_bytes_to_target": _mean_if_all(summaries["to_target_total_bytes"], reached),
                "sim_time_to_target_s": _mean_if_all(summaries["to_target_sim_time_s"], reached),
                "up_bytes": summaries["up_bytes"].mean(),
                "down_bytes": summaries["down_bytes"].mean(),
                "total_bytes": summaries["total_bytes"].mean(),
                "sim_time_s": summaries["sim_time_s"].astype(float).mean(),
            }
            | {
                f"up_x_{level}": summaries[f"uplink_compression_{level}"].mean()
                for level in ("payload", "message", "transport")
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    indexed = table.set_index("run")
    for column, ratio in (("up_bytes", "up_x_fewer"), ("total_bytes", "total_x_fewer")):
        base = [indexed[column].get(baselines.get(name), float("nan")) for name in table["run"]]
        table[ratio] = pd.Series(base, dtype=float) / table[column]
    return table


def _mean_if_all(values: pd.Series, reached: pd.Series) -> float:
    """The mean over seeds when every seed reached the target, else NaN."""
    return float(values.astype(float).mean()) if reached.all() else float("nan")


def _flat(table: dict[str, Any], where: str) -> dict[str, Any]:
    """A sweep table's settings as flat run-config keys (sub-tables dotted)."""
    try:
        return flatten_dict(table)
    except ValueError as error:  # a list or other non-scalar value
        raise ConfigError(f"{where}: {error}") from None


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (no extra dependency)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return (
                "-" if value != value else f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
            )
        return str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)
    ]
    return "\n".join(lines) + "\n"


def baseline_runs(sweep: Sweep) -> dict[str, str]:
    """Each run's byte baseline: the first dense run (no codec) with as many clients."""
    fedavg = [name for name, runs in sweep.runs.items() if parse(resolve(runs)).axes.dense]
    baselines = {}
    for name in sweep.runs:
        same = [f for f in fedavg if sweep.clients[f] == sweep.clients[name]]
        if same:
            baselines[name] = same[0]
    return baselines


def run_sweep(sweep: Sweep) -> pd.DataFrame:
    """Run every job in order (a failure is reported and skipped), then compare."""
    from flower_app.simulation import run_experiment  # imports Flower: only when running

    jobs = sweep.jobs()
    done: dict[str, list[Path]] = {}
    failed: list[str] = []
    started = time.perf_counter()
    for index, (name, seed, overrides) in enumerate(jobs, start=1):
        elapsed = time.perf_counter() - started
        left = (
            f"about {elapsed / (index - 1) * (len(jobs) - index + 1) / 60:.1f} min left"
            if index > 1
            else "time left known after the first run"
        )
        print(
            f"[sweep {sweep.name}] run {index}/{len(jobs)}: {name} seed {seed} "
            f"(elapsed {elapsed / 60:.1f} min, {left})",
            flush=True,
        )
        finished = sweep.folder / run_folder_name(name, seed)
        problem = untouchable(finished)
        if problem:
            print(f"[sweep {sweep.name}] {finished}: {problem}; left alone", flush=True)
            failed.append(run_folder_name(name, seed))
            continue
        if (finished / "summary.json").is_file():
            changed = changed_settings(finished, overrides, sweep.clients[name])
            if not changed:
                print(f"[sweep {sweep.name}] {finished} is already finished: reused", flush=True)
                done.setdefault(name, []).append(finished)
                continue
            print(
                f"[sweep {sweep.name}] {finished} ran with other settings "
                f"({', '.join(changed)}): run again",
                flush=True,
            )
            shutil.rmtree(finished)
        elif finished.exists():
            done_rounds = resumable_rounds(finished, overrides, sweep.clients[name])
            if done_rounds:
                print(
                    f"[sweep {sweep.name}] {finished} did not finish: resumed after round "
                    f"{done_rounds}",
                    flush=True,
                )
                overrides = overrides | {"resume": True}
            else:
                print(f"[sweep {sweep.name}] {finished} did not finish: run again", flush=True)
                shutil.rmtree(finished)
        try:
            run_dir = run_experiment(overrides, sweep.clients[name])
        except Exception as error:  # noqa: BLE001  (a failed run must not stop the sweep)
            trace = finished / FAILURE_LOG
            trace.parent.mkdir(parents=True, exist_ok=True)
            trace.write_text(traceback.format_exc())
            print(
                f"[sweep {sweep.name}] run {name} seed {seed} FAILED: "
                f"{type(error).__name__}: {error} (traceback: {trace})",
                flush=True,
            )
            failed.append(run_folder_name(name, seed))
            continue
        done.setdefault(name, []).append(run_dir)
    table = compare(done, sweep.target_accuracy, baseline_runs(sweep))
    write_comparison(sweep.folder, table, done, failed)
    return table


def untouchable(run_dir: Path) -> str:
    """Why a sweep must neither rerun nor delete a run folder ("" when it may): another
    command holds it, or its checkpoint exists but cannot be read (a run that may be worth
    more than a rerun: move it away to run again)."""
    try:
        check_free(run_dir)
        load(run_dir)
    except ConfigError as error:  # load says any damage in one line
        return str(error)
    return ""


def resumable_rounds(run_dir: Path, overrides: dict[str, Any], clients: int) -> int:
    """The rounds an unfinished run can be resumed after (0: none, or other settings)."""
    try:
        checkpoint = load(run_dir)
        check_resumable(run_dir, parse(resolve(overrides)).to_flat())
    except (ConfigError, OSError, ValueError):
        return 0
    if checkpoint is None or checkpoint.clients != clients:
        return 0
    return checkpoint.server_round


def changed_settings(run_dir: Path, overrides: dict[str, Any], clients: int) -> list[str]:
    """The settings of a finished run that differ from the sweep's now (sorted keys).

    Every run-config key (run_config.json) and `num-supernodes` (summary.json); a folder whose
    files cannot be read counts as changed.
    """
    wanted = parse(resolve(overrides)).to_flat() | {"num-supernodes": clients}
    try:
        stored = json.loads((run_dir / "run_config.json").read_text(encoding="utf-8"))
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        stored["num-supernodes"] = summary["bandwidth"]["clients"]
    except (OSError, ValueError, KeyError, TypeError):
        return ["run_config.json or summary.json unreadable"]
    # lists: faults.* id lists as written before they were kept in run-config form ("0,3")
    stored = {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in stored.items()}
    return sorted(key for key, value in wanted.items() if stored.get(key) != value)


def write_comparison(
    folder: Path, table: pd.DataFrame, run_dirs: dict[str, list[Path]], failed: list[str]
) -> list[Path]:
    """comparison.csv, comparison.md and the comparison plots in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "comparison.csv", index=False)
    note = f"\nFailed runs (left out): {', '.join(failed)}\n" if failed else ""
    (folder / "comparison.md").write_text(to_markdown(table) + note, encoding="utf-8")
    return [folder / "comparison.csv", folder / "comparison.md", *plot_comparison(folder, run_dirs)]


def main(argv: list[str] | None = None) -> int:
    """Command line: run a sweep file; a bad file is one line and exit code 2."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_file", type=Path)
    args = parser.parse_args(argv)
    try:
        sweep = load_sweep(args.sweep_file)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = run_sweep(sweep)
    print(to_markdown(table))
    print(f"sweep folder: {sweep.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A SuperNode that crashes mid-run and comes back: does the run go on, resynchronised?

Deploys a SuperLink and 3 SuperNodes on loopback (`flower_app.deploy`), runs STC for 8
rounds, stops partition 1's SuperNode by pid once round 2's row is written and starts it
again with the same node config (a new node id, no state). Prints partition 1's messages
(the query to the new node, the dense `float32-resync`, then STC catch-ups) and every
round's delivered count. Every process is stopped by pid at the end; bounded in time.

    python bench/supernode_restart.py [--rounds 8] [--timeout-s 120]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flower_app.deploy import Deployment  # noqa: E402
from flower_app.launch import flwr_run, validated_run_config  # noqa: E402
from flower_app.processes import flower_env, new_home, remove_home  # noqa: E402

RESTARTED = 1  # the partition whose SuperNode is restarted
WAIT_S = 300  # for round 2's row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--timeout-s", type=float, default=120.0, help="round-timeout-s")
    args = parser.parse_args()
    output = Path(tempfile.mkdtemp(prefix="supernode-restart-"))
    overrides = {
        "model": "logistic",
        "strategy": "stc",
        "stc.p-down": 0.05,
        "fraction-train": 1.0,
        "fraction-evaluate": 0.0,
        "num-server-rounds": args.rounds,
        "local-steps": 5,
        "round-timeout-s": args.timeout_s,
        "output-dir": str(output),
        "run-name": "restart",
    }
    run_config = validated_run_config(overrides, 3)
    run_dir = output / "restart"
    deployment = Deployment(new_home("deploy"), 3)
    try:
        deployment.start()
        env = flower_env(deployment.home)
        run = threading.Thread(target=flwr_run, args=(deployment.home, env, run_config))
        run.start()
        if not wait_for_rows(run_dir / "rounds.csv", rows=3):
            raise RuntimeError(f"round 2 did not end within {WAIT_S} s; see {deployment.home}")
        deployment.restart_supernode(RESTARTED)
        print(f"partition {RESTARTED}'s SuperNode restarted after round 2")
        run.join(args.rounds * args.timeout_s + WAIT_S)
    finally:
        deployment.stop()
    remove_home(deployment.home)
    messages = pd.read_csv(run_dir / "bandwidth.csv")
    columns = ["round", "partition_id", "phase", "direction", "codec", "status", "transport_bytes"]
    print(messages[messages["partition_id"].isin([RESTARTED, -1])][columns].to_string(index=False))
    rounds = pd.read_csv(run_dir / "rounds.csv")
    print(rounds[["round", "selected", "delivered", "test_accuracy"]].to_string(index=False))
    print(f"run folder: {run_dir}")


def wait_for_rows(path: Path, rows: int) -> bool:
    """Whether `path` holds `rows` rows besides its header within `WAIT_S`."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) > rows:
            return True
        time.sleep(0.5)
    return False


if __name__ == "__main__":
    main()

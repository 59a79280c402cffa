"""Which node holds which partition: the checks behind the one-off partition-id query.

Every node must report `partition-id` and `num-partitions` (its node config); together they
must cover 0 .. num-partitions - 1 exactly once, all with the same num-partitions. Anything
else is one `DiscoveryError` before round 1, naming the node and what is missing.
"""

from __future__ import annotations

import time

from flwr.serverapp import Grid

NODE_POLL_S, NODES_STABLE_POLLS = 0.2, 5  # the node count must hold for 1 s
NODE_CONFIG_HINT = "start each SuperNode with --node-config 'partition-id=<i> num-partitions=<n>'"

Report = tuple[int, int] | None  # (partition-id, num-partitions), or None when not reported


class DiscoveryError(RuntimeError):
    """The nodes' partition ids are missing, repeated or incomplete (a setup error)."""


def wait_for_nodes(grid: Grid, timeout_s: float) -> list[int]:
    """The grid's node ids once their number has stopped growing (sorted).

    A simulation registers its nodes in a thread of its own while the ServerApp starts: asked
    too early, the grid knows none or only some of them.
    """
    deadline = time.monotonic() + timeout_s
    node_ids, stable = sorted(grid.get_node_ids()), 0
    while stable < NODES_STABLE_POLLS and time.monotonic() < deadline:
        time.sleep(NODE_POLL_S)
        latest = sorted(grid.get_node_ids())
        stable = stable + 1 if latest == node_ids and latest else 0
        node_ids = latest
    return node_ids


def setup_problem(reports: dict[int, Report]) -> str:
    """What no waiting can mend: a node without ids, ids out of range, repeated or in conflict.

    `reports` maps node id -> its report; "" when there is no such problem.
    """
    owner: dict[int, int] = {}
    sizes = {report[1] for report in reports.values() if report is not None}
    for node_id, report in sorted(reports.items()):
        if report is None:
            return f"node {node_id} reported no partition-id and num-partitions; {NODE_CONFIG_HINT}"
        partition_id, num_partitions = report
        if len(sizes) > 1:
            return f"the nodes disagree on num-partitions ({sorted(sizes)}); {NODE_CONFIG_HINT}"
        if not 0 <= partition_id < num_partitions:
            return (
                f"node {node_id} has partition-id={partition_id}, outside 0..{num_partitions - 1} "
                f"(num-partitions={num_partitions})"
            )
        if partition_id in owner:
            return (
                f"nodes {owner[partition_id]} and {node_id} both have partition-id={partition_id}; "
                "give each SuperNode its own"
            )
        owner[partition_id] = node_id
    return ""


def missing_partitions(reports: dict[int, Report]) -> list[int]:
    """Partition ids in 0 .. num-partitions - 1 that no node reported (all, with no reports)."""
    valid = [report for report in reports.values() if report is not None]
    if not valid:
        return []
    covered = {partition_id for partition_id, _ in valid}
    return [pid for pid in range(valid[0][1]) if pid not in covered]


def coverage_problem(reports: dict[int, Report], waited_s: float) -> str:
    """The error when the wait for nodes ran out: the partition ids that have no node."""
    if not reports:
        return f"no node joined within {waited_s:.0f} s; nothing to train"
    missing = ", ".join(map(str, missing_partitions(reports)))
    return (
        f"no node has partition-id {missing} after {waited_s:.0f} s "
        f"({len(reports)} node(s) answered); {NODE_CONFIG_HINT}"
    )

"""Which node holds which partition, learnt by a partition-id query (phase `query`).

Every node must report `partition-id` and `num-partitions` (its node config); together they
must cover 0 .. num-partitions - 1 exactly once, all with the same num-partitions. Anything
else is one `DiscoveryError` before round 1, naming the node and what is missing. Everything
after discovery addresses partitions, never Flower's run-specific node ids. A node that joins
later (a restarted SuperNode gets a new node id) is queried when the next round starts: its
partition moves to it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import WARNING

from flwr.app import Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid

from ledger.book import Ledger
from protocol import keys

NODE_POLL_S = 0.05  # how often to look for nodes that joined
QUERY_TIMEOUT_S = 600.0
DISCOVERY_TIMEOUT_S = 120.0  # how long to wait for nodes of a deployment that join late
NODE_CONFIG_HINT = "start each SuperNode with --node-config 'partition-id=<i> num-partitions=<n>'"

Report = tuple[int, int] | None  # (partition-id, num-partitions), or None when not reported


class DiscoveryError(RuntimeError):
    """The nodes' partition ids are missing, repeated or incomplete (a setup error)."""


def first_nodes(grid: Grid, timeout_s: float) -> list[int]:
    """The grid's node ids as soon as it knows one (sorted; [] when none came in time).

    A simulation registers its nodes in a thread of its own while the ServerApp starts: the
    ones registered later are queried as they come, until every partition has its node.
    """
    deadline = time.monotonic() + timeout_s
    node_ids = sorted(grid.get_node_ids())
    while not node_ids and time.monotonic() < deadline:
        time.sleep(NODE_POLL_S)
        node_ids = sorted(grid.get_node_ids())
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


class Directory:
    """The map between partitions and the nodes that hold them (one node per partition)."""

    def __init__(self) -> None:
        self.node_of: dict[int, int] = {}  # partition_id -> node_id
        self.partition_of: dict[int, int] = {}  # node_id -> partition_id
        self.strangers: set[int] = set()  # nodes that joined later with no partition of ours
        self.waiting: dict[int, int] = {}  # node -> the partition it takes once its node is gone

    def discover(self, grid: Grid, ledger: Ledger) -> int:
        """Ask every node for its partition id (one small real message each way, logged).

        Nodes that join later (a deployment) are waited for until every partition id in
        0 .. num-partitions - 1 has its node, at most `DISCOVERY_TIMEOUT_S`; a node without
        ids, a repeated id or a gap left at the deadline is a `DiscoveryError`. Returns the
        number of partitions.
        """
        deadline = time.monotonic() + DISCOVERY_TIMEOUT_S
        reports: dict[int, Report] = {}
        exchanges: list[tuple[Message, Message]] = []
        node_ids = first_nodes(grid, DISCOVERY_TIMEOUT_S)
        while True:
            new = [node_id for node_id in node_ids if node_id not in reports]
            reports |= self._query(grid, new, reports, exchanges)
            if reports and not missing_partitions(reports):
                self._log(ledger, exchanges)
                return len(self.node_of)
            if time.monotonic() > deadline:
                raise DiscoveryError(coverage_problem(reports, DISCOVERY_TIMEOUT_S))
            time.sleep(NODE_POLL_S)
            node_ids = sorted(grid.get_node_ids())

    def refresh(self, grid: Grid, ledger: Ledger, server_round: int, timeout_s: float) -> list[int]:
        """Query the nodes that joined since the last look; returns the partitions that moved.

        A node reporting a partition of this run takes it over from the node that had it once
        that node is offline (a restarted SuperNode comes back under a new node id, without
        its state; a killed one stays online for up to two heartbeat intervals): until then
        it waits, asked nothing more, so that two online nodes of one partition do not swap
        it every round. A node with no partition of this run, or no answer in `timeout_s`, is
        left out with a warning and not asked again. The queries are logged in `server_round`.
        """
        online = set(grid.get_node_ids())
        self.waiting = {node: pid for node, pid in self.waiting.items() if node in online}
        known = {*self.partition_of, *self.strangers, *self.waiting}
        new = [node_id for node_id in sorted(online) if node_id not in known]
        exchanges = _ask(grid, new, timeout_s) if new else []
        for _, reply in sorted(exchanges, key=lambda pair: pair[1].metadata.src_node_id):
            node_id = reply.metadata.src_node_id
            report = None if reply.has_error() else partition_report(reply)
            if report is None or report[1] != len(self.node_of) or report[0] not in self.node_of:
                log(WARNING, "node %s joined with no partition of this run (%s)", node_id, report)
                self.strangers.add(node_id)
                continue
            self.waiting[node_id] = report[0]
            if self.node_of[report[0]] in online:
                log(
                    WARNING,
                    "node %s reports partition %s, which online node %s holds: it takes over "
                    "once that node is offline",
                    node_id,
                    report[0],
                    self.node_of[report[0]],
                )
        moved = [
            self._take_over(node_id, partition_id)
            for node_id, partition_id in sorted(self.waiting.items())
            if self.node_of[partition_id] not in online
        ]
        silent = set(new) - {reply.metadata.src_node_id for _, reply in exchanges}
        if silent:
            log(WARNING, "nodes %s joined but did not answer the query; left out", sorted(silent))
            self.strangers |= silent
        self._log(ledger, exchanges, server_round)  # a stranger's under partition -1
        return sorted(moved)

    def _take_over(self, node_id: int, partition_id: int) -> int:
        """`node_id` holds `partition_id` from now on; returns the partition."""
        old = self.node_of[partition_id]
        log(WARNING, "partition %s moved from node %s to node %s", partition_id, old, node_id)
        del self.partition_of[old]
        del self.waiting[node_id]
        self.node_of[partition_id] = node_id
        self.partition_of[node_id] = partition_id
        return partition_id

    def partition(self, reply: Message) -> int:
        """The partition of a reply's sender (-1 for a node that is not known)."""
        return self.partition_of.get(reply.metadata.src_node_id, -1)

    def in_order(self, replies: Iterable[Message]) -> list[Message]:
        """Replies in partition order: logs and float sums do not depend on arrival."""
        return sorted(replies, key=self.partition)

    def _query(
        self,
        grid: Grid,
        node_ids: list[int],
        known: dict[int, Report],
        exchanges: list[tuple[Message, Message]],
    ) -> dict[int, Report]:
        """Query `node_ids`, check their answers with those `known`, map them; the messages
        and replies go to `exchanges`."""
        if not node_ids:
            return {}
        answered = _ask(grid, node_ids, QUERY_TIMEOUT_S)
        reports = {reply.metadata.src_node_id: partition_report(reply) for _, reply in answered}
        problem = setup_problem(known | reports)
        if problem:
            raise DiscoveryError(problem)
        for node_id, (partition_id, _) in reports.items():
            self.node_of[partition_id] = node_id
            self.partition_of[node_id] = partition_id
        exchanges.extend(answered)
        return reports

    def _log(
        self, ledger: Ledger, exchanges: list[tuple[Message, Message]], server_round: int = 0
    ) -> None:
        """Log every query and its reply in partition order, however the nodes came in."""
        for message, reply in sorted(exchanges, key=lambda pair: self.partition(pair[1])):
            partition_id = self.partition(reply)
            ledger.sent(server_round, partition_id, "query", message, {})
            sizes = ledger.arrived(reply)
            ledger.replied(server_round, "query", partition_id, reply, "delivered", sizes, {})


def _ask(grid: Grid, node_ids: list[int], timeout_s: float) -> list[tuple[Message, Message]]:
    """Send each node the partition-id query; (query, reply) for every reply a node sent.

    Replies are paired with their queries by `reply_to_message_id` (the grid gives each query
    its id as it pushes it). A reply the SuperLink made itself for a node it holds unavailable
    (its source is the SuperLink's node id, not the node's) is no answer.
    """
    queries = [
        Message(RecordDict(), message_type=MessageType.QUERY, dst_node_id=node_id)
        for node_id in node_ids
    ]
    replies = grid.send_and_receive(queries, timeout=timeout_s)
    by_id = {query.metadata.message_id: query for query in queries}
    return [
        (by_id[reply.metadata.reply_to_message_id], reply)
        for reply in replies
        if reply.metadata.src_node_id != SUPERLINK_NODE_ID
        and reply.metadata.reply_to_message_id in by_id
    ]


def partition_report(reply: Message) -> Report:
    """(partition-id, num-partitions) from a query reply; None when it has none."""
    if reply.has_error():
        raise DiscoveryError(
            f"node {reply.metadata.src_node_id} failed the partition-id query: {reply.error.reason}"
        )
    metrics = reply.content.metric_records.get(keys.METRICS, MetricRecord())
    ids = metrics.get(keys.PARTITION_ID), metrics.get(keys.NUM_PARTITIONS)
    if not all(isinstance(value, int) for value in ids):
        return None
    return int(ids[0]), int(ids[1])

"""The per-node index of the simulation's LinkState answers as Flower's own lookup does."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from flower_app.fast_linkstate import (
    FLOWER_GET,
    INDEX,
    REPLIED,
    event,
    indexed_get,
    woken_send_and_receive,
)


class FakeState:
    """What both lookups use of InMemoryLinkState: a lock, the stored messages, the check
    that deletes expired ones (here: those marked expired)."""

    def __init__(self, messages: list[tuple[str, int, bool]]) -> None:
        self.lock = threading.RLock()
        self.message_ins_store = {
            message_id: SimpleNamespace(
                metadata=SimpleNamespace(dst_node_id=node, run_id=1, delivered_at=""),
                expired=expired,
            )
            for message_id, node, expired in messages
        }
        by_node: dict = {}
        for message_id, node, _ in messages:  # as the indexed store_message_ins keeps them
            by_node.setdefault(node, {})[message_id] = None
        self.__dict__[INDEX] = by_node
        self.checked: list[str] = []

    def _check_stored_messages(self, message_ids: set[str]) -> None:
        for message_id in message_ids:
            self.checked.append(message_id)
            if self.message_ins_store[message_id].expired:
                del self.message_ins_store[message_id]


def test_the_indexed_lookup_returns_what_flowers_returns_and_checks_only_the_nodes_messages():
    # Prepare: messages for nodes 7 and 9 interleaved; one of node 7's has expired
    messages = [("a", 7, False), ("b", 9, False), ("c", 7, True), ("d", 7, False), ("e", 9, False)]
    flower, indexed = FakeState(messages), FakeState(messages)
    calls = [(7, 1), (9, None), (7, 1), (7, 1), (9, 1)]
    # Execute / Assert: call by call the same messages, delivered in the same order
    for node, limit in calls:
        expected = ids_of(flower, FLOWER_GET(flower, node, limit))
        assert ids_of(indexed, indexed_get(indexed, node, limit)) == expected
    assert set(indexed.message_ins_store) == set(flower.message_ins_store) == {"a", "b", "d", "e"}
    # Flower checks the stored messages in order until it has `limit`; the index checks only
    # the node's own: node 7 finds a; node 9 takes b and e; node 7 passes a, drops the
    # expired c, finds d; then finds nothing new twice
    assert indexed.checked == ["a", "b", "e", "a", "c", "d", "a", "d", "b", "e"]
    assert len(flower.checked) == 17  # 1 + 5 + 3 + 4 + 4: every message up to the find


def ids_of(state: FakeState, messages: list) -> list[str]:
    return [next(k for k, m in state.message_ins_store.items() if m is g) for g in messages]


class FakeGrid:
    """What the woken pull uses of InMemoryGrid: push, pull, the state, the pull interval.
    Replies are stored by another thread, one at a time, each signalled as Flower's store."""

    def __init__(self, answered: list[str], interval_s: float) -> None:
        self.state = SimpleNamespace()
        self.pull_interval = interval_s
        self.answered, self.stored, self.pulls = answered, [], 0

    def push_messages(self, messages):
        def answer():
            for message_id in self.answered:
                self.stored.append(
                    SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=message_id))
                )
                event(self.state, REPLIED).set()

        threading.Timer(0.01, answer).start()
        return [message.id for message in messages]

    def pull_messages(self, message_ids):
        self.pulls += 1
        found = [r for r in self.stored if r.metadata.reply_to_message_id in message_ids]
        self.stored = [r for r in self.stored if r not in found]
        return found


def test_the_woken_pull_returns_every_reply_and_gives_up_at_the_timeout():
    messages = [SimpleNamespace(id=name) for name in ("a", "b", "c")]
    # Execute: every message answered (a pull interval of a minute: only wake-ups end the
    # waits), then one never answered
    grid = FakeGrid(["c", "a", "b"], interval_s=60.0)
    replies = woken_send_and_receive(grid, messages, timeout=30.0)
    partial = woken_send_and_receive(FakeGrid(["b"], 0.05), messages, timeout=0.3)
    # Assert: all three, in arrival order, long before a minute; then the one that came
    assert [r.metadata.reply_to_message_id for r in replies] == ["c", "a", "b"]
    assert [r.metadata.reply_to_message_id for r in partial] == ["b"]

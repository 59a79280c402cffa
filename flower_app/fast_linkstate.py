"""A per-node index for the in-memory LinkState of Flower's simulation (Flower 1.41).

The simulation engine asks `InMemoryLinkState.get_message_ins(node_id, limit=1)` for every
node every 0.1 s, and each call walks every stored message, checking each one's expiry and
federation: with N nodes and M messages waiting, N x M checks a sweep (discovery of 10,000
clients: 10^8, minutes per sweep; a steady round of 10 out of 1,000 clients: 10^4 a sweep).
`install` keeps, per destination node, the ids of its stored messages in arrival order, and
walks only those: the same messages are returned in the same order and each gets the same
checks, when its node is polled. Installed by the ServerApp factory, so that it applies where
the simulation engine runs in the ServerApp's process (`run_simulation`, and `flwr run` on a
simulation SuperLink); elsewhere it changes nothing.
"""

from __future__ import annotations

from logging import WARNING

from flwr.app import Message
from flwr.common import log
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore.date import now

INDEX = "_message_ins_by_node"  # node id -> {message id: None}, in arrival order
FLOWER_GET = InMemoryLinkState.get_message_ins  # Flower's own lookup (the tests compare)


def install() -> bool:
    """Put the indexed lookup on InMemoryLinkState (once); False if its layout is unknown."""
    if getattr(InMemoryLinkState, INDEX, False):
        return True
    for name in ("store_message_ins", "get_message_ins", "_check_stored_messages"):
        if not hasattr(InMemoryLinkState, name):
            log(WARNING, "InMemoryLinkState has no %s: the per-node index is not used", name)
            return False
    store_message_ins = InMemoryLinkState.store_message_ins

    def indexed_store(self: InMemoryLinkState, message: Message) -> str | None:
        message_id = store_message_ins(self, message)
        if message_id is not None:
            with self.lock:
                by_node = self.__dict__.setdefault(INDEX, {})
                by_node.setdefault(message.metadata.dst_node_id, {})[message_id] = None
        return message_id

    InMemoryLinkState.store_message_ins = indexed_store
    InMemoryLinkState.get_message_ins = indexed_get
    setattr(InMemoryLinkState, INDEX, True)
    return True


def indexed_get(
    self: InMemoryLinkState, node_id: int, limit: int | None, *, run_id: int | None = None
) -> list[Message]:
    """`get_message_ins` over the node's own messages only (Flower's checks, Flower's order)."""
    if limit is not None and limit < 1:
        raise AssertionError("`limit` must be >= 1")
    found: list[Message] = []
    by_node = self.__dict__.setdefault(INDEX, {})
    if not by_node.get(node_id):  # the usual answer, asked of every node every 0.1 s
        return found
    with self.lock:
        for message_id in list(by_node.get(node_id, {})):
            self._check_stored_messages({message_id})
            message = self.message_ins_store.get(message_id)
            if message is None:  # delivered and answered, expired or deleted
                del by_node[node_id][message_id]
                continue
            if (run_id is None or message.metadata.run_id == run_id) and (
                message.metadata.delivered_at == ""
            ):
                found.append(message)
            if limit and len(found) == limit:
                break
    if found:
        delivered_at = now().isoformat()
        for message in found:
            message.metadata.delivered_at = delivered_at
    return found

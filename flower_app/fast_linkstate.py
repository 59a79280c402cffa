"""Flower's simulation path (Flower 1.41) without its polling costs: an index and wake-ups.

1. A per-node index. The simulation engine asks `InMemoryLinkState.get_message_ins(node_id,
   limit=1)` for every node every 0.1 s, and each call walks every stored message, checking
   each one's expiry and federation: with N nodes and M messages waiting, N x M checks a sweep
   (discovery of 10,000 clients: 10^8, minutes per sweep; a steady round of 10 out of 1,000
   clients: 10^4 a sweep). The index keeps, per destination node, the ids of its stored
   messages in arrival order, and walks only those: the same messages are returned in the
   same order and each gets the same checks, when its node is polled.
2. Wake-ups instead of fixed sleeps. The engine sweeps the nodes, then sleeps 0.1 s; the
   ServerApp's grid pulls the replies, then sleeps 0.1 s: on average 0.1 s of a round spent
   waiting, whatever the model (a 1-step round of the logistic model trains in 0.03 s). Here
   both sleeps end as soon as a message (for the engine) or a reply (for the grid) is stored,
   after a gap of ten times the CPU time of the last sweep or pull, so that polling uses at
   most a tenth of a core however many nodes wait (the waits exceed Flower's 0.1 s only where
   one pull costs over 10 ms: Flower checks every awaited reply at each pull, 10,000 at the
   discovery of 10,000 clients). The engine's sweep visits only the nodes with stored
   messages, through the index, instead of every node. Same calls, same checks: the waits and
   the order in which nodes' messages are queued differ (each message is handled on its own).

`install` is called by the ServerApp factory, which `flower_app.simulation` calls before it
starts the engine (under `flwr run` the app is loaded while Ray starts, before the engine's
sweep begins; a sweep already running keeps Flower's loop). It applies where the simulation
engine runs in the ServerApp's process; elsewhere it changes nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from logging import WARNING
from queue import Queue

from flwr.app import Message
from flwr.common import log
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore.date import now
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

INDEX = "_message_ins_by_node"  # node id -> {message id: None}, in arrival order
ARRIVED = "_message_ins_arrived"  # set when a message is stored for a node
REPLIED = "_message_res_arrived"  # set when a reply is stored
FLOWER_GET = InMemoryLinkState.get_message_ins  # Flower's own lookup (the tests compare)
ENGINE_INTERVAL_S = 0.1  # Flower's sweep interval (vce_api.add_messages_to_queue)
POLL_COST_RATIO = 10  # a poll waits at least this many times what the last one took


def install() -> bool:
    """Put the index and the wake-ups on Flower's classes (once); False if their layout is
    not the one this module was written for (Flower's own path is then used)."""
    if getattr(InMemoryLinkState, INDEX, False):
        return True
    needed = {
        InMemoryLinkState: (
            "store_message_ins",
            "store_message_res",
            "get_message_ins",
            "_check_stored_messages",
        ),
        InMemoryGrid: ("send_and_receive", "push_messages", "pull_messages"),
        vce_api: ("add_messages_to_queue",),
    }
    for owner, names in needed.items():
        for name in names:
            if not hasattr(owner, name):
                log(WARNING, "%s has no %s: Flower's simulation path is used as is", owner, name)
                return False
    store_message_ins = InMemoryLinkState.store_message_ins
    store_message_res = InMemoryLinkState.store_message_res

    def indexed_store(self: InMemoryLinkState, message: Message) -> str | None:
        message_id = store_message_ins(self, message)
        if message_id is not None:
            with self.lock:
                by_node = self.__dict__.setdefault(INDEX, {})
                by_node.setdefault(message.metadata.dst_node_id, {})[message_id] = None
            event(self, ARRIVED).set()
        return message_id

    def signalled_store_res(self: InMemoryLinkState, message: Message) -> str | None:
        message_id = store_message_res(self, message)
        event(self, REPLIED).set()
        return message_id

    InMemoryLinkState.store_message_ins = indexed_store
    InMemoryLinkState.store_message_res = signalled_store_res
    InMemoryLinkState.get_message_ins = indexed_get
    InMemoryGrid.send_and_receive = woken_send_and_receive
    vce_api.add_messages_to_queue = woken_add_messages_to_queue
    setattr(InMemoryLinkState, INDEX, True)
    return True


def event(state: InMemoryLinkState, name: str) -> threading.Event:
    """The state's event `name` (made on first use)."""
    return state.__dict__.setdefault(name, threading.Event())


def pause(wake: threading.Event, spent_s: float, interval_s: float) -> None:
    """Wait `POLL_COST_RATIO` x `spent_s`, then until `wake` is set or `interval_s` has passed
    in all. `spent_s` is the poll's CPU time (`time.thread_time`): a poll that waited for the
    GIL did not cost its wait."""
    gap_s = POLL_COST_RATIO * spent_s
    time.sleep(gap_s)
    if gap_s < interval_s:
        wake.wait(interval_s - gap_s)


def woken_add_messages_to_queue(
    state: InMemoryLinkState,
    queue: Queue[Message],
    nodes_mapping: dict[int, int],
    f_stop: threading.Event,
) -> None:
    """Flower's `vce_api.add_messages_to_queue`, its sweep started by a stored message and
    limited to the nodes that have messages (in the order their messages came)."""
    arrived = event(state, ARRIVED)
    by_node = state.__dict__.setdefault(INDEX, {})
    while not f_stop.is_set():
        arrived.clear()  # before the sweep: a message stored during it wakes the next one
        started = time.thread_time()
        for node_id in list(by_node):
            if node_id in nodes_mapping:
                for message in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(message)
        pause(arrived, time.thread_time() - started, ENGINE_INTERVAL_S)


def woken_send_and_receive(
    self: InMemoryGrid, messages: Iterable[Message], *, timeout: float | None = None
) -> Iterable[Message]:
    """Flower's `InMemoryGrid.send_and_receive`, its pulls started by a stored reply."""
    replied = event(self.state, REPLIED)
    message_ids = set(self.push_messages(messages))
    del messages
    end_time = time.time() + (timeout if timeout is not None else 0.0)
    replies: list[Message] = []
    while timeout is None or time.time() < end_time:
        replied.clear()  # before the pull: a reply stored during it wakes the next one
        started = time.thread_time()
        found = list(self.pull_messages(message_ids))
        replies.extend(found)
        message_ids.difference_update(reply.metadata.reply_to_message_id for reply in found)
        if not message_ids:
            break
        pause(replied, time.thread_time() - started, self.pull_interval)
    return replies


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
        own = by_node.get(node_id, {})
        for message_id in list(own):
            self._check_stored_messages({message_id})
            message = self.message_ins_store.get(message_id)
            if message is None:  # delivered and answered, expired or deleted
                del own[message_id]
                continue
            if (run_id is None or message.metadata.run_id == run_id) and (
                message.metadata.delivered_at == ""
            ):
                found.append(message)
            if limit and len(found) == limit:
                break
        if not own:
            by_node.pop(node_id, None)  # the engine's sweep visits the nodes listed here
    if found:
        delivered_at = now().isoformat()
        for message in found:
            message.metadata.delivered_at = delivered_at
    return found

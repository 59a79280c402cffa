"""Client state off the heap: each partition's `context.state` kept in files between rounds.

In a simulation the ServerApp links `<output-dir>/.client-state/<run-id>` to its run folder's
`client-state/` (see `state_link`). This mod, the outermost, loads a partition's state from
there before a train message and, after a reply without error, writes it back as that round's
version and empties `context.state`: Flower's context carries nothing between messages, and a
run resumed from a checkpoint finds every client's state as it was. A ClientApp that raises or
replies with an error writes nothing, so its state stays its last successful round's, as the
server assumes. Without the link (a deployment) the state stays on the node, in its context.

Files: `<partition>/r<round>.state`, the serialized RecordDict. A partition keeps its newest
version and the newest one before it (the one a checkpoint of the previous round needs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.serde import ProtoRecordDict, recorddict_from_proto, recorddict_to_proto

from protocol import keys, wire

LINKS = ".client-state"  # under output-dir: one link per Flower run id


def state_link(output_dir: str, run_id: int) -> Path:
    """Where a run's clients find their state folder (a link the ServerApp makes)."""
    return Path(output_dir).resolve() / LINKS / str(run_id)


def make_state_mod(run_config: dict[str, Any] | None = None) -> Mod:
    """The mod, reading `output-dir` from `run_config` (or the context's, when None)."""

    def state_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if not msg.metadata.message_type.startswith(MessageType.TRAIN):
            return call_next(msg, context)
        config = wire.scalars(msg.content)  # read before the wire mod unpacks the message
        if keys.SERVER_ROUND not in config:
            return call_next(msg, context)
        output_dir = (run_config or dict(context.run_config)).get("output-dir", "outputs")
        folder = state_link(str(output_dir), context.run_id)
        if not folder.is_dir():
            return call_next(msg, context)
        store = PartitionStates(folder, int(context.node_config[keys.PARTITION_ID]))
        server_round = int(config[keys.SERVER_ROUND])
        context.state = store.load(server_round)
        reply = call_next(msg, context)
        if not reply.has_error():
            store.save(server_round, context.state)
        context.state = RecordDict()
        return reply

    return state_mod


class PartitionStates:
    """The versions of one partition's state, one file per round."""

    def __init__(self, folder: Path, partition_id: int) -> None:
        self.folder = folder / str(partition_id)

    def load(self, server_round: int) -> RecordDict:
        """The newest state of a round up to `server_round` (empty when there is none)."""
        older = [r for r in self.rounds() if r <= server_round]
        if not older:
            return RecordDict()
        data = self._path(max(older)).read_bytes()
        return recorddict_from_proto(ProtoRecordDict.FromString(data))

    def save(self, server_round: int, state: RecordDict) -> None:
        """Write `state` as round `server_round`'s (atomically); drop versions no one needs.

        A client that never held a state (FedAvg) writes nothing.
        """
        stored = self.rounds()
        if not len(state) and not stored:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.folder / f"r{server_round}.state.tmp"
        temporary.write_bytes(recorddict_to_proto(state).SerializeToString())
        os.replace(temporary, self._path(server_round))
        before = [r for r in stored if r < server_round]
        for old in before[:-1]:
            self._path(old).unlink()

    def rounds(self) -> list[int]:
        """The rounds with a stored version, in order."""
        if not self.folder.is_dir():
            return []
        return sorted(int(path.name[1:-6]) for path in self.folder.glob("r*.state"))

    def drop_after(self, server_round: int) -> None:
        """Remove the versions of rounds after `server_round` (a resumed run redoes them)."""
        for later in (r for r in self.rounds() if r > server_round):
            self._path(later).unlink()

    def _path(self, server_round: int) -> Path:
        return self.folder / f"r{server_round}.state"

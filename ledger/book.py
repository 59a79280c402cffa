"""The run's ledger: one row per message in bandwidth.csv, and every total drawn from those rows.

Each message is measured at four levels (`payload_bits` from the codec, then `content_bytes`,
`message_bytes` and `transport_bytes` from `ledger.levels`) and carries the fate of its
exchange (`delivered`, `partial`, `dropped`, `failed`, `rejected`, `timeout`), down rows
included: a message down waits for its reply and is logged with the reply's status. Totals
are kept per direction and level as bytes *sent* (every row) and bytes *used* (rows whose
update or answer was used, less the payload that was sent but not used, such as a progressive
refinement that came too late).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import Message

from ledger.levels import Levels, late_transport_bytes, measure
from protocol import keys, wire

LEVELS = ("payload", "content", "message", "transport")
DIRECTIONS = ("down", "up")
USED = ("delivered", "partial")  # statuses whose message was used
TRAIN_PHASES = ("train", "upload")  # phases inside the bandwidth formula (QSFL uploads apart)
CLIENT_KEYS = (keys.CLIENT_DOWN_BYTES, keys.CLIENT_UP_BYTES)

BANDWIDTH_COLUMNS = (
    "round",
    "partition_id",
    "phase",
    "direction",
    "codec",
    "payload_bits",
    "unused_payload_bits",
    "content_bytes",
    "message_bytes",
    "transport_bytes",
    "requests",
    "flower_bytes",
    "client_message_bytes",
    "dense_bytes",
    "status",
    "sim_start_s",
    "sim_end_s",
)

SimTimes = Callable[[int, str, str, str], tuple[float | str, float | str]]


@dataclass
class ReplySizes:
    """A reply as it arrived: its levels, its frame and the sizes the client measured."""

    levels: Levels
    client_down_bytes: int | str = ""
    client_up_bytes: int | str = ""
    late_transport_bytes: int = 0  # of the arrays that travel last (a refinement)
    frame_codec: str = ""  # the codec a compact reply's frame names ("" in Flower's layout)
    frame_problem: str = ""  # why a compact reply does not unpack ("" when it does)


@dataclass
class Totals:
    """Bytes per direction and level, sent and used."""

    sent: dict = field(default_factory=lambda: _zeros())
    used: dict = field(default_factory=lambda: _zeros())
    messages: dict = field(default_factory=lambda: dict.fromkeys(DIRECTIONS, 0))

    def add(self, row: dict) -> None:
        """Count one logged row (payload in bits until `bytes_by_level`)."""
        direction = row["direction"]
        sizes = {
            "payload": row["payload_bits"],
            "content": row["content_bytes"],
            "message": row["message_bytes"],
            "transport": row["transport_bytes"],
        }
        for level, size in sizes.items():
            self.sent[direction][level] += size
        if row["status"] in USED:
            unused_bits = row["unused_payload_bits"]
            for level, size in sizes.items():
                self.used[direction][level] += size - (
                    unused_bits if level == "payload" else unused_bits // 8
                )
            self.messages[direction] += 1

    def bytes_by_level(self, kind: str) -> dict:
        """`sent` or `used` bytes as {direction: {level: bytes}} (payload bits / 8, floored)."""
        totals = getattr(self, kind)
        return {
            direction: {
                level: size // 8 if level == "payload" else size
                for level, size in totals[direction].items()
            }
            for direction in DIRECTIONS
        }


class Ledger:
    """Measures and logs every message of a run; keeps its totals.

    Parameters
    ----------
    log_row : callable
        Where a finished row goes (the recorder's bandwidth.csv).
    sim_times : callable
        `(partition_id, phase, direction, status) -> (start_s, end_s)` on the simulated
        network ("" without one).
    """

    def __init__(self, log_row: Callable[[dict], None], sim_times: SimTimes) -> None:
        self._log_row = log_row
        self._sim_times = sim_times
        self._pending: dict[tuple[str, int], dict] = {}  # (phase, node) -> row awaiting a reply
        self._pushed: set[str] = set()  # ids of the objects replies pushed this round
        self.run = Totals()
        self.train = Totals()
        self.round = Totals()

    def start_round(self) -> None:
        """Reset the current round's totals."""
        self.round = Totals()
        self._pushed = set()

    def sent(
        self,
        server_round: int,
        partition_id: int,
        phase: str,
        message: Message,
        fields: dict,
    ) -> None:
        """Measure a message going down; its row waits for the reply (or a timeout)."""
        self._pending[(phase, message.metadata.dst_node_id)] = {
            "round": server_round,
            "partition_id": partition_id,
            "phase": phase,
            "direction": "down",
            "levels": measure(message, "down"),
        } | fields

    def pending_down(self, phase: str) -> dict[int, Levels]:
        """The levels of the messages of `phase` still waiting for a reply, by partition."""
        return {
            row["partition_id"]: row["levels"]
            for (pending_phase, _), row in self._pending.items()
            if pending_phase == phase
        }

    def arrived(self, reply: Message) -> ReplySizes:
        """Measure a reply as it arrived, open its frame, take the client's sizes out of it.

        A compact reply (protocol/wire.py) is measured as it travelled, then replaced by the
        records it carries; one that does not unpack keeps its content and says why in
        `frame_problem`. Call it in partition order: an object that an earlier reply of the
        round carried is at the SuperLink already and costs this reply no push (Flower's
        content addressing).
        """
        reply_sizes = ReplySizes(measure(reply, "up", self._pushed))
        self._pushed |= reply_sizes.levels.object_ids
        if reply.has_error():
            return reply_sizes
        reply_sizes.late_transport_bytes = late_transport_bytes(reply.content)
        if wire.is_packed(reply.content):
            try:
                unpacked = wire.unpack(reply.content)
            except wire.FrameError as error:
                reply_sizes.frame_problem = f"malformed frame: {error}"
                return reply_sizes
            reply.content, reply_sizes.frame_codec = unpacked.content, unpacked.codec
        if keys.METRICS not in reply.content.metric_records:
            return reply_sizes
        metrics = reply.content.metric_records[keys.METRICS]
        client = [metrics.pop(key, None) for key in CLIENT_KEYS]
        if all(isinstance(value, float) for value in client):
            reply_sizes.client_down_bytes, reply_sizes.client_up_bytes = (int(v) for v in client)
        return reply_sizes

    def replied(
        self,
        server_round: int,
        phase: str,
        partition_id: int,
        reply: Message,
        status: str,
        reply_sizes: ReplySizes,
        fields: dict,
    ) -> None:
        """Log a reply, and the message down it answers with the same status."""
        down = self._pending.pop((phase, reply.metadata.src_node_id), None)
        if down is not None:
            self._log(
                down | {"status": status, "client_message_bytes": reply_sizes.client_down_bytes}
            )
        self._log(
            {
                "round": server_round,
                "partition_id": partition_id,
                "phase": phase,
                "direction": "up",
                "levels": reply_sizes.levels,
                "status": status,
                "client_message_bytes": reply_sizes.client_up_bytes,
            }
            | fields
        )

    def flush_pending(self, phase: str) -> None:
        """Log the messages of `phase` that got no reply (`timeout`), in partition order."""
        left = sorted(
            (key for key in self._pending if key[0] == phase),
            key=lambda key: self._pending[key]["partition_id"],
        )
        for key in left:
            self._log(self._pending.pop(key) | {"status": "timeout"})

    def _log(self, entry: dict) -> None:
        levels: Levels = entry.pop("levels")
        start_s, end_s = self._sim_times(
            entry["partition_id"], entry["phase"], entry["direction"], entry["status"]
        )
        row = {
            "round": entry["round"],
            "partition_id": entry["partition_id"],
            "phase": entry["phase"],
            "direction": entry["direction"],
            "codec": entry.get("codec", ""),
            "payload_bits": entry.get("payload_bits", 0),
            "unused_payload_bits": entry.get("unused_payload_bits", 0),
            "content_bytes": levels.content_bytes,
            "message_bytes": levels.message_bytes,
            "transport_bytes": levels.transport_bytes,
            "requests": levels.requests,
            "flower_bytes": levels.flower_bytes,
            "client_message_bytes": entry.get("client_message_bytes", ""),
            "dense_bytes": entry.get("dense_bytes", 0),
            "status": entry["status"],
            "sim_start_s": start_s,
            "sim_end_s": end_s,
        }
        self._log_row(row)
        self.run.add(row)
        self.round.add(row)
        if row["phase"] in TRAIN_PHASES:
            self.train.add(row)

    def round_bytes(self) -> dict:
        """The round row's byte columns: this round's and the run's, sent, two levels."""
        round_sent = self.round.bytes_by_level("sent")
        run_sent = self.run.bytes_by_level("sent")
        row = {}
        for level in ("transport", "content"):
            row[f"up_{level}_bytes"] = round_sent["up"][level]
            row[f"down_{level}_bytes"] = round_sent["down"][level]
            row[f"cum_{level}_bytes"] = run_sent["up"][level] + run_sent["down"][level]
        row["cum_up_transport_bytes"] = run_sent["up"]["transport"]
        row["cum_down_transport_bytes"] = run_sent["down"]["transport"]
        return row

    def formula_summary(
        self, model_bytes: int, clients: int, fraction_train: float, rounds: int
    ) -> dict:
        """The run's bytes per direction and level, and the train phase beside the formula.

        The formula (model down + update up) x N x fraction x rounds counts float32 payloads,
        so it is compared with the payload the train phase used; each level above adds what
        Flower wraps around it (`<level>_framing_bytes`).
        """
        formula = 2 * model_bytes * clients * fraction_train * rounds
        formula = int(formula) if float(formula).is_integer() else formula
        used = self.train.bytes_by_level("used")
        train = {level: used["up"][level] + used["down"][level] for level in LEVELS}
        summary = {
            "clients": clients,
            "fraction_train": fraction_train,
            "rounds": rounds,
            "model_bytes": model_bytes,
            "formula_bytes": formula,
            "train_messages": sum(self.train.messages.values()),
            "train_payload_bytes": train["payload"],
            "payload_minus_formula_bytes": train["payload"] - formula,
        }
        for level in LEVELS[1:]:
            summary[f"train_{level}_bytes"] = train[level]
            summary[f"{level}_framing_bytes"] = train[level] - train["payload"]
        summary["bytes"] = self.bytes_summary()
        return summary

    def bytes_summary(self) -> dict:
        """Bytes sent and used over the whole run: {direction: {level: {sent, used}}}."""
        sent, used = self.run.bytes_by_level("sent"), self.run.bytes_by_level("used")
        return {
            direction: {
                level: {"sent": sent[direction][level], "used": used[direction][level]}
                for level in LEVELS
            }
            for direction in DIRECTIONS
        }


def _zeros() -> dict:
    return {direction: dict.fromkeys(LEVELS, 0) for direction in DIRECTIONS}

"""What one Flower message costs, at three levels above the codec's payload bits (and as
Flower's own traffic counter counts it).

- `content_bytes`: Flower's `count_bytes()` over the message's records (values and keys).
- `message_bytes`: the message as Flower serializes it for transport: every object of its tree
  (message with metadata, record dict, records, arrays, array chunks) deflated by Flower itself.
- `transport_bytes`: what the message costs on Flower 1.41's SuperNode <-> SuperLink
  transport, protobuf over HTTP/1.1, counted from the SuperNode's side. A message down is one
  `pull-messages` exchange (its metadata and object tree), one `pull-object` exchange per
  object and one `confirm-message-received`; a message up is one `push-messages` exchange and
  one `push-object` exchange per object. Request and response bodies are the protobufs Flower
  sends, built here with Flower's own classes; each request and response adds its HTTP head,
  a size calibrated on a real deployment (`REQUEST_HEAD_BYTES`, `RESPONSE_HEAD_BYTES`).

Random 64-bit ids (run, node, task) are varints of 8 to 10 bytes; they are counted at a fixed
value (`CANONICAL_ID`, 10 bytes) so that the same seed gives the same bytes, and the id of the
message a reply answers at its deployment form (64 hex digits; a simulation uses uuids).
Flower sends an object only where the other side lacks it (content addressing): `measure`
takes the ids already held there (the ledger passes those pushed earlier in the round).
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass, field

from flwr.app import Message, MessageType, RecordDict
from flwr.app.message import make_message
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.serde import message_to_proto
from flwr.common.serde_utils import metadata_from_proto, metadata_to_proto
from flwr.proto.fleet_pb2 import (
    PullMessagesRequest,
    PullMessagesResponse,
    PushMessagesRequest,
    PushMessagesResponse,
    Reconnect,
)
from flwr.proto.message_pb2 import (
    ConfirmMessageReceivedRequest,
    ConfirmMessageReceivedResponse,
    PullObjectRequest,
    PullObjectResponse,
    PushObjectRequest,
    PushObjectResponse,
)
from flwr.proto.node_pb2 import Node
from flwr.supercore.inflatable.inflatable_object import (
    InflatableObject,
    get_all_nested_objects,
    get_object_tree,
    no_object_id_recompute,
)

from protocol import keys, wire

CANONICAL_ID = 2**63 + 1  # a uint64 id whose varint takes 10 bytes, the most common length
REPLY_TO_ID = "0" * 64  # message ids are object ids: sha256 hex digests
SESSION_ID = "00000000-0000-4000-8000-000000000000"  # a uuid4 string, as Flower's push sessions
RECONNECT_S = 5  # what the SuperLink sends back with every push-messages
# HTTP/1.1 heads, calibrated on a loopback deployment (flower_app.transport_check): a request
# head is REQUEST_HEAD_BYTES + len(path) + digits of its Content-Length (httpx's headers, the
# node's public key, a per-request signature and timestamp); a response head is
# RESPONSE_HEAD_BYTES + digits of its Content-Length (uvicorn's headers).
REQUEST_HEAD_BYTES = 816
RESPONSE_HEAD_BYTES = 127
FLEET = "/v1/fleet/"


@dataclass(frozen=True)
class Exchange:
    """One modelled HTTP exchange: its path and the protobuf bodies each way."""

    path: str
    request_body: int
    response_body: int

    @property
    def up_bytes(self) -> int:
        """The request on the wire: head and body."""
        return REQUEST_HEAD_BYTES + len(self.path) + _digits(self.request_body) + self.request_body

    @property
    def down_bytes(self) -> int:
        """The response on the wire: head and body."""
        return RESPONSE_HEAD_BYTES + _digits(self.response_body) + self.response_body


@dataclass(frozen=True)
class Levels:
    """A message's size at each level, and how many HTTP requests it takes."""

    content_bytes: int
    message_bytes: int
    transport_bytes: int
    requests: int
    flower_bytes: int  # what Flower's own traffic counter adds for it (`flower_counted`)
    object_ids: frozenset[str] = field(default=frozenset(), compare=False, repr=False)


def content_bytes(content: RecordDict) -> int:
    """Bytes of the message content, as Flower counts them (`count_bytes` per record)."""
    return sum(record.count_bytes() for record in content.values())


def measure(message: Message, direction: str, held: Set[str] = frozenset()) -> Levels:
    """The levels of `message` travelling `direction` ("down": to a node, "up": from it).

    Objects whose ids are in `held` are already at the receiving end (content addressing:
    another node pushed the same object this round) and are not sent again.
    """
    message = canonical(message)
    with no_object_id_recompute():  # each object deflated and hashed once, as Flower pushes
        objects = _objects(message)
        exchanges = _exchanges(message, objects, direction, held)
    content = message.content if message.has_content() else RecordDict()
    moved = [body for object_id, body in objects.items() if object_id not in held]
    return Levels(
        content_bytes=content_bytes(content),
        message_bytes=sum(len(body) for body in objects.values()),
        transport_bytes=sum(e.up_bytes + e.down_bytes for e in exchanges),
        requests=len(exchanges),
        flower_bytes=flower_counted(exchanges[0], moved if direction == "up" else objects.values()),
        object_ids=frozenset(objects),
    )


def flower_counted(messages_exchange: Exchange, objects: Iterable[bytes]) -> int:
    """Bytes Flower 1.41's SuperLink counts for a message in its run's traffic (`flwr ls`).

    Its fleet handlers store the protobuf bodies of the pull-messages or push-messages
    exchange and the content of every object pulled or pushed (`store_traffic`); no HTTP
    head, no object request's other fields, no confirmation.
    """
    return (
        messages_exchange.request_body
        + messages_exchange.response_body
        + sum(len(body) for body in objects)
    )


def down_transport_bytes(content: RecordDict) -> int:
    """Transport bytes of a train message carrying `content` to a node."""
    message = Message(content, message_type=MessageType.TRAIN, dst_node_id=CANONICAL_ID)
    return measure(message, "down").transport_bytes


def pushed_objects_bytes(obj: InflatableObject) -> int:
    """Transport bytes of pushing `obj` and its descendants (part of a message going up)."""
    exchanges = [
        _push_object(object_id, child.deflate())
        for object_id, child in get_all_nested_objects(obj).items()
    ]
    return sum(e.up_bytes + e.down_bytes for e in exchanges)


def late_transport_bytes(content: RecordDict) -> int:
    """Transport bytes of the arrays that travel last (protocol.wire.LATE_ARRAYS), pushed after
    the rest of the message: a progressive refinement, which may miss a deadline."""
    late = wire.late_record(content)
    if late is not None:
        return pushed_objects_bytes(late)
    arrays = content.array_records.get(keys.ARRAYS)
    if wire.is_packed(content) or arrays is None:
        return 0
    return sum(pushed_objects_bytes(arrays[name]) for name in wire.LATE_ARRAYS if name in arrays)


def message_bytes(message: Message) -> int:
    """Bytes of every object of the message's tree, as Flower deflates them."""
    with no_object_id_recompute():
        return sum(len(body) for body in _objects(canonical(message)).values())


def exchanges_of(message: Message, direction: str) -> list[Exchange]:
    """The HTTP exchanges that carry `message` between a SuperNode and the SuperLink."""
    message = canonical(message)
    return _exchanges(message, _objects(message), direction)


def _exchanges(
    message: Message, objects: dict[str, bytes], direction: str, held: Set[str] = frozenset()
) -> list[Exchange]:
    tree = get_object_tree(message)
    header = message_to_proto(_without_content(message))
    node = Node(node_id=CANONICAL_ID)
    if direction == "down":
        pull = PullMessagesResponse(messages_list=[header], message_object_trees=[tree])
        exchanges = [_exchange("pull-messages", PullMessagesRequest(node=node), pull)]
        for object_id, body in objects.items():
            request = PullObjectRequest(node=node, run_id=CANONICAL_ID, object_id=object_id)
            response = PullObjectResponse(
                object_found=True, object_available=True, object_content=body
            )
            exchanges.append(_exchange("pull-object", request, response))
        confirm = ConfirmMessageReceivedRequest(
            node=node, run_id=CANONICAL_ID, message_object_id=message.object_id
        )
        return [
            *exchanges,
            _exchange("confirm-message-received", confirm, ConfirmMessageReceivedResponse()),
        ]
    if direction != "up":
        raise ValueError(f"direction={direction!r}; allowed: 'down', 'up'")
    push = PushMessagesRequest(
        node=node, messages_list=[header], message_object_trees=[tree], clientapp_runtime_list=[1.0]
    )
    to_push = {object_id: body for object_id, body in objects.items() if object_id not in held}
    pushed = PushMessagesResponse(
        reconnect=Reconnect(reconnect=RECONNECT_S),
        results={message.object_id: 0},
        objects_to_push=list(to_push),
        session_id=SESSION_ID,
    )
    pushes = [_push_object(object_id, body) for object_id, body in to_push.items()]
    return [_exchange("push-messages", push, pushed), *pushes]


def _push_object(object_id: str, body: bytes) -> Exchange:
    request = PushObjectRequest(
        node=Node(node_id=CANONICAL_ID),
        run_id=CANONICAL_ID,
        object_id=object_id,
        object_content=body,
        session_id=SESSION_ID,
    )
    return _exchange("push-object", request, PushObjectResponse(stored=True))


def canonical(message: Message) -> Message:
    """`message` with its random run, node and task ids set to `CANONICAL_ID`."""
    proto = metadata_to_proto(message.metadata)
    proto.run_id = CANONICAL_ID
    for name in ("src_node_id", "dst_node_id"):
        if getattr(proto, name) != SUPERLINK_NODE_ID:
            setattr(proto, name, CANONICAL_ID)
    for name in ("src_task_id", "dst_task_id"):
        if proto.HasField(name):
            setattr(proto, name, CANONICAL_ID)
    if proto.reply_to_message_id:  # a simulation's ids are uuids; on the transport, sha256 hex
        proto.reply_to_message_id = REPLY_TO_ID
    if message.has_error():
        return make_message(metadata_from_proto(proto), error=message.error)
    return make_message(metadata_from_proto(proto), content=message.content)


def _without_content(message: Message) -> Message:
    """The message header as pulled or pushed: metadata, with the message id, no content."""
    header = (
        make_message(message.metadata, error=message.error)
        if message.has_error()
        else (make_message(message.metadata, content=RecordDict()))
    )
    header.metadata.__dict__["_message_id"] = message.object_id
    return header


def _objects(message: Message) -> dict[str, bytes]:
    """Each object of the message's tree, deflated, by object id."""
    return {object_id: obj.deflate() for object_id, obj in get_all_nested_objects(message).items()}


def _exchange(name: str, request, response) -> Exchange:
    return Exchange(FLEET + name, request.ByteSize(), response.ByteSize())


def _digits(number: int) -> int:
    return len(str(number))

"""The levels of a message (ledger.levels) and the HTTP framing the byte meter reads."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from flower_app.http_frames import HttpFrame, HttpFrames
from ledger.book import Ledger
from ledger.levels import CANONICAL_ID, Exchange, exchanges_of, measure


def query(dst_node_id: int) -> Message:
    return Message(RecordDict(), message_type=MessageType.QUERY, dst_node_id=dst_node_id)


def test_an_empty_query_message_by_hand():
    # Prepare: Flower deflates an object as "<type> <child ids> <body length>\x00<body>".
    # The empty RecordDict: "RecordDict" + " " + "" + " " + "2" + "\x00" + "{}" = 16 B.
    # The message: "Message" + " " + 64 hex digits + " " + "62" + "\x00" + 62 B of protobuf:
    # metadata (tag + length: 2 B) around run id (1 + 10), source node 1 (1 + 1),
    # destination (1 + 10), ttl (1 + 8), type "query" (1 + 1 + 5), created_at (1 + 8) and
    # source task (1 + 10) = 60 B. So 7 + 1 + 64 + 1 + 2 + 1 + 62 = 138 B.
    message = query(dst_node_id=5)
    # Execute
    levels = measure(message, "down")
    exchanges = exchanges_of(message, "down")
    # Assert
    assert (levels.content_bytes, levels.message_bytes, levels.requests) == (0, 16 + 138, 4)
    assert [e.path.rsplit("/", 1)[1] for e in exchanges] == [
        "pull-messages",
        "pull-object",
        "pull-object",
        "confirm-message-received",
    ]
    # a pull-object request: node (2 + 1 + 10) + run id (1 + 10) + object id (2 + 64) = 90 B;
    # its response: found (2) + available (2) + content (2 + 16) for the record dict
    pulls = {e.response_body for e in exchanges[1:3]}
    assert [e.request_body for e in exchanges[1:]] == [90, 90, 90]
    assert pulls == {22, 4 + 3 + 138}
    # heads: 816 + len(path) + digits of the body up; 127 + digits of the body down
    assert exchanges[1].up_bytes == 816 + 21 + 2 + 90
    assert exchanges[3].down_bytes == 127 + 1 + 0
    assert levels.transport_bytes == sum(e.up_bytes + e.down_bytes for e in exchanges)
    # Flower's own counter: the pull-messages bodies and the two objects' contents
    pull_messages = exchanges[0].request_body + exchanges[0].response_body
    assert levels.flower_bytes == pull_messages + 16 + 138


def test_heads_match_what_a_loopback_deployment_measured():
    # the push of the logistic model's weight array and the pull of an empty record dict,
    # as the byte meter counted them on a real SuperNode's connection
    push = Exchange("/v1/fleet/push-object", request_body=31637, response_body=2)
    assert (push.up_bytes, push.down_bytes) == (32479, 130)
    pull = Exchange("/v1/fleet/pull-object", request_body=89, response_body=22)
    assert pull.down_bytes == 151


def test_random_ids_do_not_change_the_bytes():
    # node and run ids are random 64-bit numbers whose varints take 8 to 10 bytes
    small, large = query(dst_node_id=7), query(dst_node_id=2**64 - 1)
    TaskIdentity.run_id = 2**40
    assert measure(small, "down") == measure(large, "down") == measure(query(CANONICAL_ID), "down")


def test_an_object_pushed_earlier_in_the_round_is_not_pushed_again():
    # Prepare: two replies with different metrics and the same array record, e.g. STC's
    # per-tensor counts, which equal for every client. Objects: message, record dict, metric
    # record, array record, array, chunk: 6 pushes after the header push = 7 requests
    ledger = Ledger(lambda row: None, lambda *_: ("", ""))
    request = query(dst_node_id=5)

    def reply(loss: float) -> Message:
        content = RecordDict(
            {
                "metrics": MetricRecord({"train-loss": loss}),
                "counts": ArrayRecord({"c": Array(np.array([3], np.int32))}),
            }
        )
        return Message(content, reply_to=request)

    # Execute
    first, second = ledger.arrived(reply(0.5)), ledger.arrived(reply(0.25))
    ledger.start_round()
    next_round = ledger.arrived(reply(0.125))
    # Assert: the array record, its array and its chunk are at the SuperLink already
    assert (first.levels.requests, second.levels.requests, next_round.levels.requests) == (7, 4, 7)
    assert first.levels.message_bytes == second.levels.message_bytes
    # Flower's counter counts the objects a push stored: the second reply's array record,
    # array and chunk are not counted again
    shared = first.levels.flower_bytes - second.levels.flower_bytes
    assert shared > 0 and next_round.levels.flower_bytes == first.levels.flower_bytes


def test_http_messages_are_split_wherever_the_bytes_break():
    # Prepare: a request with a 5-byte body, then a chunked response (3 + 2 bytes)
    request = b"POST /v1/fleet/push-object HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello"
    response = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    # Execute: byte by byte, and both requests at once
    one_by_one, both = HttpFrames(), HttpFrames()
    frames = [frame for byte in request for frame in one_by_one.feed(bytes([byte]))]
    chunked = HttpFrames().feed(response)
    # Assert
    assert frames == [HttpFrame("POST /v1/fleet/push-object HTTP/1.1", len(request), 5)]
    assert frames[0].path == "/v1/fleet/push-object"
    assert both.feed(request + request) == frames * 2
    assert chunked == [HttpFrame("HTTP/1.1 200 OK", len(response), 5)]
    assert chunked[0].path == ""

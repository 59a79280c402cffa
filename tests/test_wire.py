"""The compact wire layout (protocol/wire.py): exact frames, exact inverses, clear rejections."""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from experiment.config import parse
from experiment.recorder import Recorder
from fedcodec import stc
from ledger.levels import CANONICAL_ID, late_transport_bytes, measure, pushed_objects_bytes
from mods.wire_mod import wire_mod
from protocol import keys, wire
from strategies import StcFedAvg
from tests.support import FakeGrid, model, read_rows


def records_of(content: RecordDict) -> dict:
    """A content as plain Python values, to compare two contents exactly."""
    out = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            out[name] = [(key, a.numpy().dtype, a.numpy().tolist()) for key, a in record.items()]
        else:
            out[name] = (type(record).__name__, list(record.items()))
    return out


def reply_to(content: RecordDict) -> Message:
    request = Message(RecordDict(), message_type=MessageType.TRAIN, dst_node_id=CANONICAL_ID)
    return Message(content, reply_to=request)


# ---------------------------------------------------------------- the frame, by hand
def test_a_frame_is_exactly_the_bytes_its_description_says():
    # Prepare: one uint8 array [1, 2, 3] and one metric, every name spelled out (0, length)
    content = RecordDict(
        {
            "a": ArrayRecord({"x": Array(np.array([1, 2, 3], np.uint8))}),
            "m": MetricRecord({"n": 5}),
        }
    )
    # Execute
    packed = wire.pack(content, "xyz")
    # Assert: magic, version, codec, 2 records; record a: 1 array x (uint8 = code 1, not
    # late, rank 1, dim 3); record m: 1 entry n, type int (0), zigzag 5 = 10; the 3 data bytes
    assert list(packed) == ["wire"] and list(packed["wire"]) == ["frame"]
    assert packed["wire"]["frame"] == (
        b"FW" + b"\x01" + b"\x00\x03xyz" + b"\x02"
        + b"a" + b"\x00\x01a" + b"\x01" + b"\x00\x01x" + b"\x01\x00\x01" + b"\x03"
        + b"m" + b"\x00\x01m" + b"\x01" + b"\x00\x01n" + b"\x00" + b"\x0a"
        + b"\x01\x02\x03"
    )  # fmt: skip
    assert len(packed["wire"]["frame"]) == 34


def test_names_of_the_protocol_take_one_byte_and_values_their_own_width():
    # "metrics" is name 3 and "num-examples" name 7 of the table; -3 is zigzag 5; a float
    # is 8 bytes; true is its type alone; a list of two bools is 2 bytes after its length
    assert wire.NAMES[2] == keys.METRICS and wire.NAMES[6] == keys.NUM_EXAMPLES
    metrics = MetricRecord({keys.NUM_EXAMPLES: -3})
    config = ConfigRecord({"f": 0.5, "t": True, "l": [True, False]})
    frame = wire.pack(RecordDict({keys.METRICS: metrics, "c": config}))["wire"]["frame"]
    assert frame == (
        b"FW\x01" + bytes([wire.NAMES.index("none") + 1]) + b"\x02"
        + b"m\x03\x01" + b"\x07\x00\x05"
        + b"c\x00\x01c\x03"
        + b"\x00\x01f\x01" + struct.pack("<d", 0.5)
        + b"\x00\x01t\x03"
        + b"\x00\x01l" + bytes([16 + 6]) + b"\x02\x01\x00"
    )  # fmt: skip


def test_a_compact_message_is_four_requests_up():
    # Prepare: an STC update of the logistic model's shapes, in both layouts
    rng = np.random.default_rng(0)
    update = [rng.normal(size=(10, 784)).astype(np.float32), rng.normal(size=10).astype(np.float32)]
    encoded = stc.encode(update, 0.01)
    metrics = MetricRecord({keys.TRAIN_LOSS: 0.5, keys.NUM_EXAMPLES: 100})
    arrays = ArrayRecord({name: Array(value) for name, value in encoded.arrays.items()})
    flower = RecordDict({keys.ARRAYS: arrays, keys.METRICS: metrics})
    # Execute
    compact = measure(reply_to(wire.pack(flower, "stc")), "up")
    dense = measure(reply_to(flower), "up")
    # Assert: push-messages + message, record dict, one ConfigRecord; Flower's layout pushes
    # the message, record dict, ArrayRecord, MetricRecord, 2 arrays and a chunk of each
    assert compact.requests == 1 + 3
    assert dense.requests == 1 + 4 + 2 * 2
    assert compact.transport_bytes < 6_000 < dense.transport_bytes


# ---------------------------------------------------------------- exact inverses
@pytest.mark.parametrize("chunk_bytes", [wire.CHUNK_BYTES, 64])
def test_unpack_gives_back_exactly_what_was_packed(monkeypatch, chunk_bytes):
    # Prepare: every dtype, a scalar array, an empty one, a late refinement, both record kinds
    monkeypatch.setattr(wire, "CHUNK_BYTES", chunk_bytes)  # 64: both frames travel as arrays
    arrays = {
        f"t{i}": Array(np.arange(6).astype(dtype).reshape(2, 3))
        for i, dtype in enumerate(wire.DTYPES)
    }
    arrays |= {
        "scalar": Array(np.array(7.5, np.float32)),
        "empty": Array(np.zeros((0, 4), np.int64)),
        "refine": Array(np.arange(100, dtype=np.uint8)),
    }
    content = RecordDict(
        {
            keys.ARRAYS: ArrayRecord(arrays),
            keys.CONFIG: ConfigRecord({"server-round": 3, "names": ["a", "b"], "raw": b"\x00"}),
            keys.METRICS: MetricRecord({"loss": 0.25, "counts": [1, 2]}),
        }
    )
    # Execute
    packed = wire.pack(content, "quant")
    opened = wire.unpack(packed)
    # Assert
    assert opened.codec == "quant"
    assert records_of(opened.content) == records_of(content)
    assert list(packed) == ["wire", "wire.late"]
    kind = ConfigRecord if chunk_bytes > 64 else ArrayRecord
    assert isinstance(packed["wire"], kind) and isinstance(packed["wire.late"], kind)


def test_a_content_of_scalars_alone_round_trips():
    # a report: 5 metrics and no array, so the frame's header is shorter than its entries
    metrics = MetricRecord({"a": 1, "b": 2.0, "c": 3, "d": 4.0, "e": [5, 6]})
    content = RecordDict({keys.METRICS: metrics})
    packed = wire.pack(content, "qsfl")
    # magic, version, codec "qsfl" (1 byte), 1 record: kind, name, 5 entries = 8 B; entries
    # "a" 1 (name 0, 1, a; int; zigzag 2), "b" 2.0 (+ 8 B), "c" 3, "d" 4.0, "e" [5, 6] (list
    # of ints, 2 items, zigzags 10 and 12)
    assert len(packed["wire"]["frame"]) == 8 + 5 + 12 + 5 + 12 + 7
    assert records_of(wire.unpack(packed).content) == records_of(content)


def test_the_late_arrays_cost_what_pushing_their_record_costs():
    content = RecordDict(
        {
            keys.ARRAYS: ArrayRecord(
                {"base": Array(np.zeros(10, np.uint8)), "refine": Array(np.ones(30, np.uint8))}
            )
        }
    )
    packed = wire.pack(content, "quant")
    # the late frame: 2 magic bytes, the version, 30 data bytes
    assert packed["wire.late"]["frame"] == b"FL\x01" + b"\x01" * 30
    assert late_transport_bytes(packed) == pushed_objects_bytes(packed["wire.late"])
    assert late_transport_bytes(content) == pushed_objects_bytes(content[keys.ARRAYS]["refine"])


# ---------------------------------------------------------------- malformed frames
def packed_update() -> RecordDict:
    return wire.pack(
        RecordDict(
            {
                keys.ARRAYS: ArrayRecord({"w": Array(np.ones(4, np.float32))}),
                keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 10, keys.TRAIN_LOSS: 0.5}),
            }
        ),
        "stc",
    )


def with_frame(frame: bytes) -> RecordDict:
    return RecordDict({"wire": ConfigRecord({"frame": frame})})


STC = bytes([wire.NAMES.index("stc") + 1])


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda f: b"XX" + f[2:], "bad magic"),
        (lambda f: f[:2] + b"\x02" + f[3:], "frame version 2"),
        (lambda f: f[:10], "truncated"),
        (lambda f: f[:-1], "take 16 + 0 late bytes; it carries 15 + 0"),
        (lambda f: f + b"\x00", "take 16 + 0 late bytes; it carries 17 + 0"),
        (lambda f: f.replace(b"\x00\x01w\x0a", b"\x00\x01w\x63"), "dtype code 99"),
        (lambda f: f.replace(b"FW\x01" + STC + b"\x02", b"FW\x01" + STC + b"\x7f"), "says 127"),
        (lambda f: f.replace(b"FW\x01" + STC, b"FW\x01\xc8"), "name index 200"),
        (lambda f: f.replace(b"\x07\x00\x14", b"\x07\x09\x14"), "value type 9"),
    ],
)
def test_a_frame_that_disagrees_with_its_data_is_a_frame_error(change, reason):
    frame = packed_update()["wire"]["frame"]
    with pytest.raises(wire.FrameError, match=re.escape(reason)):
        wire.unpack(with_frame(change(frame)))


def test_records_that_do_not_hold_a_frame_are_a_frame_error():
    frame = packed_update()["wire"]["frame"]
    with pytest.raises(wire.FrameError, match="records beside the frame: arrays"):
        wire.unpack(RecordDict({"wire": packed_update()["wire"], keys.ARRAYS: model()}))
    with pytest.raises(wire.FrameError, match="'wire' does not hold the frame"):
        wire.unpack(RecordDict({"wire": ConfigRecord({"frame": "text"})}))
    with pytest.raises(wire.FrameError, match="'wire' does not hold the frame"):
        wire.unpack(RecordDict({"wire": ConfigRecord({"frame": frame, "extra": 1})}))
    late = wire.pack(RecordDict({keys.ARRAYS: ArrayRecord({"refine": Array(np.ones(2))})}))
    del late["wire.late"]
    with pytest.raises(wire.FrameError, match="'wire.late' does not hold the late frame"):
        wire.unpack(late)


def test_random_damage_to_a_frame_is_a_frame_error_or_a_valid_content():
    # Prepare
    frame = bytearray(packed_update()["wire"]["frame"])
    rng = np.random.default_rng(7)
    outcomes = {"error": 0, "valid": 0}
    for _ in range(2000):
        damaged = bytearray(frame)
        for position in rng.integers(0, len(frame), rng.integers(1, 4)):
            damaged[position] = int(rng.integers(0, 256))
        # Execute
        try:
            opened = wire.unpack(with_frame(bytes(damaged)))
        except wire.FrameError:
            outcomes["error"] += 1
            continue
        # Assert: what unpacks is a content of records
        assert all(
            isinstance(r, ArrayRecord | MetricRecord | ConfigRecord)
            for r in opened.content.values()
        )
        outcomes["valid"] += 1
    assert outcomes["error"] > 0 and outcomes["valid"] > 0


# ---------------------------------------------------------------- client and server
def test_the_client_sees_flowers_layout_and_replies_in_the_requests(tmp_path):
    # Prepare: a packed train request naming codec "none"
    config = ConfigRecord({keys.SERVER_ROUND: 1})
    request = Message(
        wire.pack(RecordDict({keys.ARRAYS: model(1.0), keys.CONFIG: config})),
        message_type=MessageType.TRAIN,
        dst_node_id=CANONICAL_ID,
    )
    seen = []

    def handler(msg, context):
        seen.append(records_of(msg.content))
        metrics = MetricRecord({keys.TRAIN_LOSS: 0.5, keys.NUM_EXAMPLES: 10})
        return Message(RecordDict({keys.ARRAYS: model(2.0), keys.METRICS: metrics}), reply_to=msg)

    # Execute
    reply = wire_mod(request, None, handler)
    # Assert: the handler got the records; the reply is one frame whose scalars hold the
    # sizes the client measured, the reply's own size included
    assert seen == [records_of(RecordDict({keys.ARRAYS: model(1.0), keys.CONFIG: config}))]
    assert list(reply.content) == ["wire"]
    opened = wire.unpack(reply.content)
    assert opened.codec == "none"
    metrics = opened.content[keys.METRICS]
    assert metrics[keys.CLIENT_UP_BYTES] == measure(reply, "up").message_bytes
    np.testing.assert_array_equal(opened.content[keys.ARRAYS]["w"].numpy(), 2.0)


def compact_stc(flat_config, tmp_path):
    flat_config.update({"strategy": "stc", "fraction-train": 1.0, "wire.layout": "compact"})
    strategy = StcFedAvg(parse(flat_config), Recorder(tmp_path / "run"))
    grid = FakeGrid(2)
    strategy.discover_partitions(grid)
    return strategy, grid


def test_a_malformed_frame_or_another_codec_is_rejected_and_the_round_goes_on(
    flat_config, tmp_path, caplog
):
    # Prepare: two clients of a compact STC run; one sends a truncated frame, one a frame
    # naming codec "topk"
    strategy, grid = compact_stc(flat_config, tmp_path)
    messages = list(strategy.configure_train(1, model(), ConfigRecord(), grid))
    assert all(list(m.content) == ["wire"] for m in messages)
    replies = []
    for message, codec in zip(messages, ["stc", "topk"], strict=True):
        update = stc.encode([np.ones((2, 3), np.float32), np.ones(3, np.float32)], 0.5)
        metrics = MetricRecord({keys.TRAIN_LOSS: 0.5, keys.NUM_EXAMPLES: 10})
        content = RecordDict(
            {
                keys.ARRAYS: ArrayRecord({k: Array(v) for k, v in update.arrays.items()}),
                keys.METRICS: metrics,
            }
        )
        packed = wire.pack(content, codec)
        if codec == "stc":
            packed["wire"]["frame"] = packed["wire"]["frame"][:-2]
        replies.append(Message(packed, reply_to=message))
    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)
    # Assert: both left out with their reasons, both rows logged, the model kept
    assert arrays is None
    rows = [r for r in read_rows(strategy.recorder) if r["phase"] == "train"]
    assert sorted((r["direction"], r["status"]) for r in rows) == [
        ("down", "rejected"),
        ("down", "rejected"),
        ("up", "rejected"),
        ("up", "rejected"),
    ]
    assert "malformed frame: the frame's arrays take" in caplog.text
    assert "its frame names codec 'topk'; this phase asked for 'stc'" in caplog.text

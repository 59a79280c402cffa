"""The quant preset and the wire mod without a simulation (a lambda as call_next)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ConfigRecord, Error, Message, MessageType, RecordDict

from fedcodec import quant
from fedcodec.quant import QuantSpec
from ledger.levels import content_bytes, measure, message_bytes
from mods.quant_mod import quant_mod
from mods.wire_mod import wire_mod
from protocol import keys
from protocol.quant import decode_quantized_model, quantized_downlink, spec_config
from tests.support import (
    SHAPES,
    context,
    random_model,
    read_rows,
    record,
    run_round,
    train_message,
    trainer,
)

UNIFORM4 = QuantSpec("uniform", bits=4)


def quant_config(spec: QuantSpec = UNIFORM4, feedback: bool = False, **extra) -> ConfigRecord:
    return ConfigRecord({keys.SERVER_ROUND: 1, keys.SEED: 0} | spec_config(spec, feedback) | extra)


def test_the_wire_mod_writes_what_came_in_and_what_goes_out():
    # Prepare
    content = RecordDict({keys.ARRAYS: record(random_model(0)), keys.CONFIG: ConfigRecord()})
    msg = train_message(content)
    # Execute
    reply = wire_mod(msg, context(), trainer(random_model(1), []))
    # Assert: both sizes at the message level, in the reply's metrics, as floats
    metrics = reply.content[keys.METRICS]
    assert metrics[keys.CLIENT_DOWN_BYTES] == message_bytes(msg)
    assert metrics[keys.CLIENT_UP_BYTES] == message_bytes(reply)  # the entries included
    # w (4, 25) float32: 128 + 400 + 1; b (5,): 128 + 20 + 1; metrics: 10+8 + 12+8, and the
    # two entries: len("client-down-message-bytes") + 8 + len("client-up-message-bytes") + 8
    assert content_bytes(reply.content) == 529 + 149 + 38 + 25 + 8 + 23 + 8


def test_client_and_server_disagree_on_a_reply_altered_in_flight(quant_strategy):
    # Prepare: one client's reply, measured by its wire mod; then one byte more on the way
    strategy, grid = quant_strategy(**{"quant.bits": 2, "fraction-train": 0.25})
    (msg,) = strategy.configure_train(1, record(random_model(0)), ConfigRecord(), grid)
    chain = lambda m, c: quant_mod(m, c, trainer(random_model(1), []))  # noqa: E731
    reply = wire_mod(msg, context(), chain)
    reply.content[keys.METRICS][keys.TRAIN_LOSS] = 0.25  # same size: still agreed
    tampered = wire_mod(msg, context(), chain)
    tampered.content[keys.ARRAYS]["lows"] = Array(np.zeros(3, np.float32))  # one value more
    # Execute
    fair, altered = strategy.ledger.arrived(reply), strategy.ledger.arrived(tampered)
    # Assert
    assert fair.client_up_bytes == fair.levels.message_bytes
    assert fair.client_down_bytes == measure(msg, "down").message_bytes
    assert altered.client_up_bytes != altered.levels.message_bytes
    assert keys.CLIENT_UP_BYTES not in tampered.content[keys.METRICS]  # taken out by the server


def test_the_wire_mod_leaves_a_failed_reply_alone():
    failed = lambda msg, ctx: Message(Error(code=1, reason="boom"), reply_to=msg)  # noqa: E731
    msg = train_message(RecordDict({keys.CONFIG: ConfigRecord()}))
    assert wire_mod(msg, context(), failed).has_error()


def test_quant_mod_quantizes_the_update():
    # Prepare
    ctx, seen, step, start = context(), [], random_model(1), random_model(0)
    msg = train_message(RecordDict({keys.ARRAYS: record(start), keys.CONFIG: quant_config()}))
    # Execute
    reply = quant_mod(msg, ctx, trainer(step, seen))
    # Assert: 105 entries x 4 bits = 420 bits in 53 bytes, plus a low and a step per tensor
    arrays = {name: a.numpy() for name, a in reply.content[keys.ARRAYS].items()}
    assert set(arrays) == {"codes", "lows", "steps"}
    assert arrays["codes"].nbytes == 53
    decoded, bits = quant.decode_arrays(arrays, list(SHAPES.values()), UNIFORM4)
    assert bits == 420 + 2 * 64
    expected = quant.compress(list(step.values()), UNIFORM4)
    for got, want in zip(decoded, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)  # update = (start + step) - start
    np.testing.assert_array_equal(seen[0]["w"], start["w"])
    assert keys.STATE_QUANT_RESIDUAL not in ctx.state.array_records


def test_quant_mod_error_feedback_keeps_what_was_not_sent():
    ctx, step = context(), random_model(1)
    msg = train_message(
        RecordDict({keys.ARRAYS: record(random_model(0)), keys.CONFIG: quant_config(feedback=True)})
    )
    reply = quant_mod(msg, ctx, trainer(step, []))
    arrays = {name: a.numpy() for name, a in reply.content[keys.ARRAYS].items()}
    sent, _ = quant.decode_arrays(arrays, list(SHAPES.values()), UNIFORM4)
    residual = ctx.state[keys.STATE_QUANT_RESIDUAL]
    for (name, value), decoded in zip(step.items(), sent, strict=True):
        np.testing.assert_allclose(decoded + residual[name].numpy(), value, atol=1e-5)
        assert np.abs(residual[name].numpy()).max() > 0


def test_quant_mod_trains_from_the_quantized_downlink():
    # Prepare: the global model quantized to 3 bits, as the strategy sends it
    ctx, seen, start = context(), [], random_model(0)
    down, entries, _ = quantized_downlink(start, 3)
    config = quant_config(**entries)
    assert list(config[keys.DOWN_SHAPES]) == [2, 4, 25, 1, 5]  # rank then dimensions
    msg = train_message(RecordDict({keys.DOWN_QUANT: down, keys.CONFIG: config}))
    # Execute
    quant_mod(msg, ctx, trainer(random_model(1), seen))
    # Assert: training started from the 3-bit values
    expected = quant.compress(list(start.values()), QuantSpec("uniform", bits=3))
    for name, want in zip(SHAPES, expected, strict=True):
        np.testing.assert_array_equal(seen[0][name], want)
        assert len(np.unique(seen[0][name])) <= 8


def test_quant_mod_passes_other_messages_through():
    content = RecordDict({keys.ARRAYS: record(random_model(0)), keys.CONFIG: ConfigRecord()})
    reply = quant_mod(train_message(content), context(), trainer(random_model(1), []))
    assert set(reply.content[keys.ARRAYS]) == {"w", "b"}
    evaluate = Message(content, message_type=MessageType.EVALUATE, dst_node_id=1)
    assert decode_quantized_model(evaluate.content).keys() == {"w", "b"}


def test_strategy_averages_decoded_updates_and_logs_exact_sizes(quant_strategy):
    # Prepare: 4 clients, each update a constant tensor (exact at any bit width)
    strategy, grid = quant_strategy(**{"quant.bits": 2})
    start = random_model(0)
    steps = {
        pid: {n: np.full(s, float(pid), np.float32) for n, s in SHAPES.items()} for pid in range(4)
    }
    # Execute
    new_global = run_round(strategy, grid, {}, start, steps)
    # Assert: equal example counts -> mean step 1.5
    for name in SHAPES:
        np.testing.assert_allclose(new_global[name], start[name] + 1.5, atol=1e-6)
    up = [
        r for r in read_rows(strategy.recorder) if r["phase"] == "train" and r["direction"] == "up"
    ]
    assert [r["codec"] for r in up] == ["uniform2"] * 4
    # 105 entries x 2 bits + 2 x 64 header bits = 338 bits
    assert [int(r["payload_bits"]) for r in up] == [338] * 4
    # client and server measured the same messages on either side
    rows = [r for r in read_rows(strategy.recorder) if r["phase"] == "train"]
    assert [r["message_bytes"] for r in rows] == [r["client_message_bytes"] for r in rows]


def test_strategy_quantizes_the_downlink_once_per_round(quant_strategy):
    strategy, grid = quant_strategy(**{"quant.down-bits": 8})
    messages = list(strategy.configure_train(1, record(random_model(0)), ConfigRecord(), grid))
    assert all(keys.DOWN_QUANT in m.content.array_records for m in messages)
    strategy.ledger.flush_pending("train")  # no replies: the down rows are logged as they are
    rows = [r for r in read_rows(strategy.recorder) if r["phase"] == "train"]
    assert [(r["codec"], r["payload_bits"]) for r in rows] == [("uniform8", str(105 * 8 + 128))] * 4


@pytest.mark.parametrize(("loss", "status"), [(0.0, "delivered"), (1.0, "partial")])
def test_lost_refinement_uses_the_base_and_logs_partial(quant_strategy, loss, status):
    # Prepare: progressive 2 + 6; every client's update spans [0, 63] (step 63 / 255 at 8 bits)
    strategy, grid = quant_strategy(**{"quant.scheme": "progressive", "quant.refine-loss": loss})
    ramp = {
        n: np.linspace(0, 63, int(np.prod(s)), dtype=np.float32).reshape(s)
        for n, s in SHAPES.items()
    }
    steps = dict.fromkeys(range(4), ramp)
    start = random_model(0)
    # Execute
    new_global = run_round(strategy, grid, {}, start, steps)
    # Assert
    up = [
        r for r in read_rows(strategy.recorder) if r["phase"] == "train" and r["direction"] == "up"
    ]
    assert {r["status"] for r in up} == {status}
    spec = QuantSpec("progressive", base_bits=2, refine_bits=6)
    encoded = quant.encode(list(ramp.values()), spec)
    arrays = quant.drop_refinement(encoded.arrays, spec) if loss else encoded.arrays
    expected, bits = quant.decode_arrays(arrays, list(SHAPES.values()), spec)
    assert bits == (105 * 2 + 128 if loss else 105 * 8 + 128)
    # the row says what was sent; a lost refinement (105 x 6 bits) is sent but unused
    assert {int(r["payload_bits"]) for r in up} == {105 * 8 + 128}
    assert {int(r["unused_payload_bits"]) for r in up} == {105 * 6 if loss else 0}
    summary = strategy.bandwidth_summary(model_bytes=105 * 4)
    payload = summary["bytes"]["up"]["payload"]
    assert payload["sent"] - payload["used"] == (4 * 105 * 6 // 8 if loss else 0)
    # above the payload, each unused refinement takes its whole bytes (630 // 8) off `used`,
    # never adds to framing
    content = summary["bytes"]["up"]["content"]
    assert content["sent"] - content["used"] == (4 * (105 * 6 // 8) if loss else 0)
    for name, value in zip(SHAPES, expected, strict=True):
        np.testing.assert_allclose(new_global[name] - start[name], value, atol=1e-5)

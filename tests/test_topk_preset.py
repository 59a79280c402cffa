"""The topk preset without a simulation: the mod (lambda as call_next) and the strategy."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from experiment.config import parse
from experiment.recorder import Recorder
from fedcodec import topk
from mods.topk_mod import topk_mod
from protocol import keys
from strategies import TopkFedAvg
from tests.support import (
    SHAPES,
    FakeGrid,
    context,
    random_model,
    read_rows,
    record,
    train_message,
    trainer,
)


def topk_config(error_feedback: bool = True) -> ConfigRecord:
    return ConfigRecord(
        {
            keys.SERVER_ROUND: 1,
            keys.CODEC: "topk",
            keys.TOPK_P_UP: 0.1,
            keys.TOPK_ERROR_FEEDBACK: error_feedback,
        }
    )


def test_mod_sends_the_largest_entries_exactly_and_keeps_the_rest():
    ctx, seen, step = context(), [], random_model(1)
    msg = train_message(
        RecordDict({keys.ARRAYS: record(random_model(0)), keys.CONFIG: topk_config()})
    )
    reply = topk_mod(msg, ctx, trainer(step, seen))
    arrays = {name: array.numpy() for name, array in reply.content[keys.ARRAYS].items()}
    # 10% of 100 and of 5 entries: 10 and 1, sent with their exact float32 values
    counts, values = topk.counts_and_values(arrays, 2)
    assert counts.tolist() == [10, 1] and values.dtype == np.float32 and values.size == 11
    sent, _ = topk.decode_arrays(arrays, list(SHAPES.values()))
    top_w = np.sort(np.abs(step["w"]).ravel())[-10:]
    # (start + step) - start is step up to float32 rounding
    np.testing.assert_allclose(np.sort(np.abs(sent[0][sent[0] != 0])), top_w, atol=1e-6)
    residual = ctx.state[keys.STATE_TOPK_RESIDUAL]
    for (name, value), decoded in zip(step.items(), sent, strict=True):
        np.testing.assert_allclose(decoded + residual[name].numpy(), value, atol=1e-6)


def test_strategy_averages_the_decoded_updates_and_logs_their_bits(flat_config, tmp_path):
    # Prepare: the logistic model, 2 of 4 clients, p-up 0.001
    flat_config.update({"strategy": "topk", "topk.p-up": 0.001})
    strategy = TopkFedAvg(parse(flat_config), Recorder(tmp_path / "run"))
    grid = FakeGrid(4)
    strategy.discover_partitions(grid)
    start = {"linear.weight": np.zeros((10, 784), np.float32), "linear.bias": np.zeros(10)}
    start["linear.bias"] = start["linear.bias"].astype(np.float32)
    messages = list(strategy.configure_train(1, record(start), ConfigRecord(), grid))
    assert messages[0].content[keys.CONFIG][keys.CODEC] == "topk"
    replies = []
    for index, msg in enumerate(messages):
        weights = np.full((10, 784), 1.0, np.float32)
        weights[0, :8] = 10.0 * (index + 1)  # the 8 largest: ceil(0.001 x 7,840) = 8
        bias = np.arange(10, dtype=np.float32)  # ceil(0.001 x 10) = 1: the 9.0 at position 9
        encoded = topk.encode([weights, bias], 0.001)
        arrays = ArrayRecord({name: Array(value) for name, value in encoded.arrays.items()})
        metrics = MetricRecord({keys.TRAIN_LOSS: 1.0, keys.NUM_EXAMPLES: 10})
        content = RecordDict({keys.ARRAYS: arrays, keys.METRICS: metrics})
        replies.append(Message(content, reply_to=msg))
    # Execute
    new, _ = strategy.aggregate_train(1, replies)
    # Assert: weights 0..7 of row 0 average (10 + 20) / 2 = 15, nothing else moved but bias 9
    weights = new["linear.weight"].numpy()
    np.testing.assert_array_equal(weights[0, :8], np.full(8, 15.0))
    assert np.count_nonzero(weights) == 8
    assert new["linear.bias"].numpy().tolist() == [0.0] * 9 + [9.0]
    # Bits by hand. Weights: density 8 / 7,840 gives Rice b = 9; gaps 0 cost "0" + 9 bits = 80.
    # Bias: density 0.1 gives b = 3; gap 9 costs "10" + "001" = 5. Counts 2 x 32, values 9 x 32.
    rows = read_rows(strategy.recorder)
    up = [r for r in rows if (r["phase"], r["direction"]) == ("train", "up")]
    assert {(r["codec"], r["payload_bits"]) for r in up} == {("topk", str(80 + 5 + 64 + 288))}

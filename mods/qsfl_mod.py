"""QSFL on the client: train and report scalars (phase 1), upload one segment (phase 2).

Phase 1 (a train message whose config names codec "qsfl"): the client trains as usual; the mod
keeps the flat update (trained - received) in `context.state` and replaces the reply's model
by two scalars beside the example count: the training loss and the relevance, the fraction of
entries whose sign agrees with the last global update (`qsfl.relevance = "update"`, its signs
sent by the server) or, as the official code does, of the trained weights whose sign agrees
with the received weights (`"weights"`). Phase 2 (message type "train.upload"):
`upload_segment` sends the segment the server asked for: dense, its top-p entries, or quantized
as the request's `quant.*` entries say.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from fedcodec.flat import flatten
from fedcodec.segments import segment_bounds
from mods.uplink import codec_config, uplink_rng
from protocol import keys
from protocol.qsfl import CODEC, encode_segment, unpack_signs
from protocol.quant import spec_from_config


def qsfl_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Phase 1: train, keep the update, reply with loss, relevance and examples only."""
    config = codec_config(msg, CODEC)
    if config is None:
        return call_next(msg, context)
    signs = msg.content.array_records.get(keys.QSFL_SIGNS)
    if signs is not None:
        del msg.content[keys.QSFL_SIGNS]
    received = [array.numpy() for array in msg.content[keys.ARRAYS].values()]
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    trained = [array.numpy() for array in reply.content[keys.ARRAYS].values()]
    flat_received, flat_trained = flatten(received), flatten(trained)
    update = flat_trained - flat_received
    if config[keys.QSFL_RELEVANCE] == "weights":
        relevance = sign_agreement(flat_trained, flat_received > 0)
    elif signs is not None:
        relevance = sign_agreement(update, unpack_signs(signs["signs"].numpy(), update.size))
    else:
        relevance = 0.0  # round 1: no global update yet, every candidate alike
    metrics = reply.content[keys.METRICS]
    context.state[keys.STATE_QSFL_UPDATE] = ArrayRecord({"update": Array(update)})
    context.state[keys.STATE_QSFL_REPORT] = ConfigRecord(
        {
            keys.SERVER_ROUND: int(config[keys.SERVER_ROUND]),
            keys.TRAIN_LOSS: float(metrics[keys.TRAIN_LOSS]),
            keys.NUM_EXAMPLES: int(metrics[keys.NUM_EXAMPLES]),
        }
    )
    metrics[keys.RELEVANCE] = relevance
    del reply.content[keys.ARRAYS]
    return reply


def upload_segment(msg: Message, context: Context) -> Message:
    """Phase 2: the requested segment of this round's update, dense or top-p."""
    config = msg.content[keys.CONFIG]
    report = context.state.config_records.get(keys.STATE_QSFL_REPORT)
    if report is None or report[keys.SERVER_ROUND] != config[keys.SERVER_ROUND]:
        raise RuntimeError(f"no update of round {config[keys.SERVER_ROUND]} to upload")
    update = context.state.array_records[keys.STATE_QSFL_UPDATE]["update"].numpy()
    del context.state[keys.STATE_QSFL_UPDATE]
    start, stop = segment_bounds(update.size, int(config[keys.QSFL_NUM_SEGMENTS]))[
        int(config[keys.QSFL_SEGMENT])
    ]
    spec = spec_from_config(config) if config[keys.QSFL_QUANTIZE] else None
    encoded = encode_segment(
        update[start:stop], float(config[keys.QSFL_TOP_P]), spec, uplink_rng(config, context)
    )
    metrics = MetricRecord(
        {
            keys.TRAIN_LOSS: report[keys.TRAIN_LOSS],
            keys.NUM_EXAMPLES: report[keys.NUM_EXAMPLES],
        }
    )
    arrays = ArrayRecord({name: Array(value) for name, value in encoded.arrays.items()})
    return Message(RecordDict({keys.ARRAYS: arrays, keys.METRICS: metrics}), reply_to=msg)


def sign_agreement(values: np.ndarray, positive: np.ndarray) -> float:
    """Fraction of entries where (values > 0) equals `positive`."""
    return float(np.mean((values > 0) == positive))

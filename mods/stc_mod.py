"""Client mod for STC: rebuild the global model from the downlink, compress the update.

Downlink: a dense model, or the compressed deltas of the rounds the client missed, applied to
the client's own copy of the global model (kept in `context.state`). The train handler then
sees a dense model as usual. Uplink: the update (trained - received) goes through error
feedback (residual in `context.state`) and STC; the reply carries the STC arrays in place
of the dense model, and says which model it trained from (its round and fingerprint). Settings
come from the message's ConfigRecord, read at call time.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from fedcodec import stc
from mods.uplink import codec_config, to_record, train_and_encode, uplink_rng
from protocol import keys
from protocol.stc import CODEC, RESYNC, apply_catch_up, model_version


def stc_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Decode an STC downlink and encode the update; pass other messages through."""
    config = codec_config(msg, CODEC)
    if config is None:
        return call_next(msg, context)
    received = rebuild_global_model(msg, context)
    rng = uplink_rng(config, context)
    p, approx = float(config[keys.STC_P_UP]), float(config[keys.STC_APPROX])
    shapes = [value.shape for value in received.values()]
    reply = train_and_encode(
        msg,
        context,
        call_next,
        received,
        lambda tensors: stc.encode(tensors, p, approx=approx, rng=rng),
        lambda result: stc.decode(result, shapes),
        keys.STATE_RESIDUAL if config[keys.STC_ACCUMULATE_UP] else None,
    )
    if not reply.has_error() and keys.METRICS in reply.content.metric_records:
        model_round = int(config[keys.SERVER_ROUND]) - 1
        reply.content[keys.METRICS][keys.MODEL] = model_version(model_round, received.values())
    return reply


def rebuild_global_model(msg: Message, context: Context) -> dict[str, np.ndarray]:
    """The global model this message brings: dense, or own copy + the deltas sent.

    The result becomes the client's copy of the global model, with its round, in
    `context.state`. Deltas but no copy: an error whose reason says `RESYNC`.
    """
    content = msg.content
    state = context.state
    if keys.DOWN in content.array_records:
        own = state.array_records.get(keys.STATE_GLOBAL)
        held = state.config_records.get(keys.STATE_GLOBAL_ROUND)
        if own is None or held is None:
            raise RuntimeError(f"{RESYNC}: STC deltas arrived but this client holds no model")
        model = {name: array.numpy() for name, array in own.items()}
        model = apply_catch_up(model, content, int(held["round"]))
    else:
        model = {name: array.numpy() for name, array in content[keys.ARRAYS].items()}
    state[keys.STATE_GLOBAL] = to_record(model)
    server_round = int(content[keys.CONFIG][keys.SERVER_ROUND])
    state[keys.STATE_GLOBAL_ROUND] = ConfigRecord({"round": server_round - 1})
    return model

"""Client mod for STC: rebuild the global model from the downlink, compress the update.

Downlink: a dense model, or the compressed deltas of the rounds the client missed, applied to
the client's own copy of the global model (kept in `context.state`). The train handler then
sees a dense model as usual. Uplink: the update (trained - received) goes through error
feedback (residual in `context.state`) and STC; the reply carries the three STC arrays in place
of the dense model. Settings come from the message's ConfigRecord, read at call time.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

from fedcodec import stc
from fedcodec.feedback import error_feedback_step
from mods import keys


def stc_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Decode an STC downlink and encode the update; pass other messages through."""
    config = msg.content.config_records.get(keys.CONFIG)
    is_stc = config is not None and config.get(keys.CODEC) == "stc"
    if msg.metadata.message_type != MessageType.TRAIN or not is_stc:
        return call_next(msg, context)
    received = receive_model(msg, context)
    msg.content[keys.ARRAYS] = to_record(received)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    trained = reply.content[keys.ARRAYS]
    delta = [trained[name].numpy() - value for name, value in received.items()]
    residual = _residual(context, received) if config[keys.STC_ACCUMULATE_UP] else None
    rng = np.random.default_rng(
        [
            int(config[keys.SEED]),
            int(config[keys.SERVER_ROUND]),
            int(context.node_config[keys.PARTITION_ID]),
            1,
        ]
    )
    encoded = _Capture(float(config[keys.STC_P_UP]), float(config[keys.STC_APPROX]), rng)
    if residual is None:
        encoded(delta)
    else:
        _, new_residual = error_feedback_step(residual, delta, encoded)
        context.state[keys.STATE_RESIDUAL] = to_record(
            dict(zip(received, new_residual, strict=True))
        )
    reply.content[keys.ARRAYS] = ArrayRecord(
        {name: Array(array) for name, array in encoded.result.arrays.items()}
    )
    return reply


def receive_model(msg: Message, context: Context) -> dict[str, np.ndarray]:
    """The global model this message brings: dense, or own copy + the deltas sent."""
    content = msg.content
    if keys.DOWN in content.array_records:
        own = context.state.array_records.get(keys.STATE_GLOBAL)
        if own is None:
            raise RuntimeError("STC deltas arrived but this client holds no global model")
        model = {name: array.numpy().copy() for name, array in own.items()}
        deltas = content.array_records[keys.DOWN]
        shapes = [value.shape for value in model.values()]
        for server_round in content[keys.CONFIG][keys.DOWN_ROUNDS]:
            arrays = {
                part: deltas[f"{server_round}.{part}"].numpy()
                for part in ("bits", "counts", "means")
            }
            decoded, _ = stc.decode_arrays(arrays, shapes)
            for name, value in zip(model, decoded, strict=True):
                model[name] += value
        del content[keys.DOWN]
    else:
        model = {name: array.numpy() for name, array in content[keys.ARRAYS].items()}
    context.state[keys.STATE_GLOBAL] = to_record(model)
    return model


def to_record(tensors: dict[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord of numpy arrays, keeping their order."""
    return ArrayRecord(
        {name: Array(np.ascontiguousarray(value)) for name, value in tensors.items()}
    )


def _residual(context: Context, model: dict[str, np.ndarray]) -> list[np.ndarray]:
    stored = context.state.array_records.get(keys.STATE_RESIDUAL)
    if stored is None:
        return [np.zeros_like(value) for value in model.values()]
    return [stored[name].numpy() for name in model]


class _Capture:
    """STC as a compress function for error feedback, keeping what was encoded."""

    def __init__(self, p: float, approx: float, rng: np.random.Generator) -> None:
        self.p, self.approx, self.rng = p, approx, rng
        self.result: stc.Encoded | None = None

    def __call__(self, tensors: list[np.ndarray]) -> list[np.ndarray]:
        self.result = stc.encode(tensors, self.p, approx=self.approx, rng=self.rng)
        return stc.decode(self.result, [t.shape for t in tensors])

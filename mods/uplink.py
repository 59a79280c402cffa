"""What the codec mods share: training from the received model, encoding with error feedback."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

from fedcodec.encoded import Encoded
from fedcodec.feedback import error_feedback_step
from protocol import keys

Tensors = list[np.ndarray]


def codec_config(msg: Message, codec: str) -> ConfigRecord | None:
    """The train message's config when it names `codec`; None for every other message."""
    config = msg.content.config_records.get(keys.CONFIG)
    if msg.metadata.message_type != MessageType.TRAIN or config is None:
        return None
    return config if config.get(keys.CODEC) == codec else None


def uplink_rng(config: ConfigRecord, context: Context) -> np.random.Generator:
    """The client's uplink random stream, keyed by (seed, round, partition)."""
    return np.random.default_rng(
        [
            int(config[keys.SEED]),
            int(config[keys.SERVER_ROUND]),
            int(context.node_config[keys.PARTITION_ID]),
            1,
        ]
    )


def to_record(tensors: dict[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord of numpy arrays, keeping their order."""
    return ArrayRecord(
        {name: Array(np.ascontiguousarray(value)) for name, value in tensors.items()}
    )


def encode_update(
    update: dict[str, np.ndarray],
    encode: Callable[[Tensors], Encoded],
    decode: Callable[[Encoded], Tensors],
    context: Context,
    residual_key: str | None,
) -> Encoded:
    """Encode an update; with `residual_key`, through error feedback on `context.state`.

    Error feedback: A = residual + update is encoded, and A - decode(encoded) is kept as the
    next residual under `residual_key`.
    """
    tensors = list(update.values())
    if residual_key is None:
        return encode(tensors)
    stored = context.state.array_records.get(residual_key)
    residual = (
        [stored[name].numpy() for name in update]
        if stored is not None
        else [np.zeros_like(value) for value in tensors]
    )
    captured: list[Encoded] = []

    def compress(accumulated: Tensors) -> Tensors:
        captured.append(encode(accumulated))
        return decode(captured[-1])

    _, new_residual = error_feedback_step(residual, tensors, compress)
    context.state[residual_key] = to_record(dict(zip(update, new_residual, strict=True)))
    return captured[-1]


def train_and_encode(
    msg: Message,
    context: Context,
    call_next: ClientAppCallable,
    received: dict[str, np.ndarray],
    encode: Callable[[Tensors], Encoded],
    decode: Callable[[Encoded], Tensors],
    residual_key: str | None,
) -> Message:
    """Train from `received`; the reply carries the encoded update in place of the model."""
    msg.content[keys.ARRAYS] = to_record(received)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    trained = reply.content[keys.ARRAYS]
    update = {name: trained[name].numpy() - value for name, value in received.items()}
    encoded = encode_update(update, encode, decode, context, residual_key)
    reply.content[keys.ARRAYS] = ArrayRecord(
        {name: Array(array) for name, array in encoded.arrays.items()}
    )
    return reply

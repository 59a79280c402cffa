"""Client mod of the uplink plugins (protocol/codecs.py): one mod runs every plugin's client half.

A train message whose config names a registered plugin (`codec`) is trained from the model it
carries; the update (trained - received) is encoded by the plugin, through error feedback on
`context.state` when the plugin asks for it, and the reply carries the plugin's arrays in place
of the model. Other messages pass through.
"""

from __future__ import annotations

from flwr.app import Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

from mods.uplink import train_and_encode, uplink_rng
from protocol import codecs, keys

RESIDUAL = "{}.residual"  # the state key of a plugin's error-feedback residual


def codec_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Encode the update with the plugin the train config names; pass other messages through."""
    codecs.load(str(context.run_config.get(keys.CODEC_MODULES, "")))  # a user's plugins
    config = msg.content.config_records.get(keys.CONFIG)
    name = None if config is None else config.get(keys.CODEC)
    codec = codecs.registered(name) if isinstance(name, str) else None
    if msg.metadata.message_type != MessageType.TRAIN or codec is None:
        return call_next(msg, context)
    received = {name: array.numpy() for name, array in msg.content[keys.ARRAYS].items()}
    rng = uplink_rng(config, context)
    shapes = [value.shape for value in received.values()]
    return train_and_encode(
        msg,
        context,
        call_next,
        received,
        lambda tensors: codec.encode(tensors, rng),
        lambda encoded: codec.decode(encoded.arrays, shapes)[0],
        RESIDUAL.format(name) if codec.error_feedback else None,
    )

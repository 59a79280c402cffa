"""Client mod for quantized transmission (the message format: protocol/quant.py).

Downlink: the dense model, or the global model quantized to `quant.down-bits` (uniform), which
the mod decodes so that training starts from the values actually received. Uplink: the update
(trained - received), through error feedback when `quant.error-feedback` is set (residual in
`context.state`), quantized as the train message's ConfigRecord says (`quant.*` keys, read at
call time); the reply carries the quantizer's arrays in place of the dense model.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from fedcodec import quant
from mods.uplink import codec_config, train_and_encode, uplink_rng
from protocol import keys
from protocol.quant import CODEC, decode_quantized_model, spec_from_config


def quant_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Decode a quantized downlink and quantize the update; pass other messages through."""
    config = codec_config(msg, CODEC)
    if config is None:
        return call_next(msg, context)
    received = decode_quantized_model(msg.content)
    spec = spec_from_config(config)
    rng = uplink_rng(config, context)
    shapes = [value.shape for value in received.values()]
    return train_and_encode(
        msg,
        context,
        call_next,
        received,
        lambda tensors: quant.encode(tensors, spec, rng),
        lambda result: quant.decode(result, shapes, spec),
        keys.STATE_QUANT_RESIDUAL if config[keys.QUANT_ERROR_FEEDBACK] else None,
    )

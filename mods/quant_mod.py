"""Client mod for quantized transmission, and the message format it shares with the strategy.

Downlink: the dense model, or the global model quantized to `quant.down-bits` (uniform), which
the mod decodes so that training starts from the values actually received. Uplink: the update
(trained - received), through error feedback when `quant.error-feedback` is set (residual in
`context.state`), quantized as the train message's ConfigRecord says (`quant.*` keys, read at
call time); the reply carries the quantizer's arrays in place of the dense model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from fedcodec import quant
from fedcodec.encoded import Encoded
from fedcodec.quant import QuantSpec
from mods import keys
from mods.uplink import codec_config, train_and_encode, uplink_rng

CODEC = "quant"


def quant_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Decode a quantized downlink and quantize the update; pass other messages through."""
    config = codec_config(msg, CODEC)
    if config is None:
        return call_next(msg, context)
    received = receive_model(msg.content)
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


def spec_config(spec: QuantSpec, error_feedback: bool) -> dict[str, Any]:
    """The ConfigRecord entries that tell a client how to quantize its update."""
    return {
        keys.CODEC: CODEC,
        keys.QUANT_SCHEME: spec.scheme,
        keys.QUANT_BITS: spec.bits,
        keys.QUANT_BASE_BITS: spec.base_bits,
        keys.QUANT_REFINE_BITS: spec.refine_bits,
        keys.QUANT_EXPONENT_BITS: spec.exponent_bits,
        keys.QUANT_MANTISSA_BITS: spec.mantissa_bits,
        keys.QUANT_STOCHASTIC: spec.stochastic,
        keys.QUANT_ERROR_FEEDBACK: error_feedback,
    }


def spec_from_config(config: ConfigRecord) -> QuantSpec:
    """The uplink quantizer a train message asks for."""
    return QuantSpec(
        scheme=str(config[keys.QUANT_SCHEME]),
        bits=int(config[keys.QUANT_BITS]),
        base_bits=int(config[keys.QUANT_BASE_BITS]),
        refine_bits=int(config[keys.QUANT_REFINE_BITS]),
        exponent_bits=int(config[keys.QUANT_EXPONENT_BITS]),
        mantissa_bits=int(config[keys.QUANT_MANTISSA_BITS]),
        stochastic=bool(config[keys.QUANT_STOCHASTIC]),
    ).validate()


def quantized_downlink(
    model: dict[str, np.ndarray], bits: int
) -> tuple[ArrayRecord, dict, Encoded]:
    """The global model quantized to `bits` (uniform): its record, config entries and encoding.

    The config entries carry the tensor names and shapes (they travel, and are counted).
    """
    encoded = quant.encode(list(model.values()), QuantSpec("uniform", bits=bits))
    shapes = [dim for value in model.values() for dim in (value.ndim, *value.shape)]
    entries = {keys.QUANT_DOWN_BITS: bits, keys.DOWN_NAMES: list(model), keys.DOWN_SHAPES: shapes}
    record = ArrayRecord({name: Array(array) for name, array in encoded.arrays.items()})
    return record, entries, encoded


def receive_model(content: RecordDict) -> dict[str, np.ndarray]:
    """The model a train message brings: dense, or decoded from its quantized form."""
    if keys.DOWN_QUANT not in content.array_records:
        return {name: array.numpy() for name, array in content[keys.ARRAYS].items()}
    config = content[keys.CONFIG]
    names, flat_shapes = list(config[keys.DOWN_NAMES]), list(config[keys.DOWN_SHAPES])
    shapes = []
    while flat_shapes:
        rank, flat_shapes = int(flat_shapes[0]), flat_shapes[1:]
        shapes.append(tuple(int(dim) for dim in flat_shapes[:rank]))
        flat_shapes = flat_shapes[rank:]
    arrays = {name: array.numpy() for name, array in content[keys.DOWN_QUANT].items()}
    spec = QuantSpec("uniform", bits=int(config[keys.QUANT_DOWN_BITS]))
    tensors, _ = quant.decode_arrays(arrays, shapes, spec)
    del content[keys.DOWN_QUANT]
    return dict(zip(names, tensors, strict=True))

"""How quantized messages travel: the uplink spec as config entries, the quantized downlink.

Uplink: the server writes the quantizer's spec into the train ConfigRecord (`spec_config`),
the client reads it back (`spec_from_config`) and replies with the quantizer's arrays.
Downlink (`quant.down-bits` > 0): the global model quantized uniformly, its tensor names and
shapes in the config (they travel and are counted), decoded by `decode_quantized_model`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedcodec import quant
from fedcodec.encoded import Encoded
from fedcodec.quant import QuantSpec
from protocol import keys

CODEC = "quant"


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


def decode_quantized_model(content: RecordDict) -> dict[str, np.ndarray]:
    """The model a message brings: dense, or decoded from its quantized form (then removed)."""
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

"""Client mod for the top-k uplink: the update's top p-up magnitudes per tensor, as float32.

The comparison codec for STC: the same position code (fedcodec/topk.py), the values kept
exact instead of replaced by +-mu. With `topk.error-feedback` what is not sent is kept in
`context.state` and added to the next update. The downlink is the dense model.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from fedcodec import topk
from mods.uplink import codec_config, train_and_encode
from protocol import keys
from protocol.topk import CODEC


def topk_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Sparsify the update to its top-k entries; pass other messages through."""
    config = codec_config(msg, CODEC)
    if config is None:
        return call_next(msg, context)
    received = {name: array.numpy() for name, array in msg.content[keys.ARRAYS].items()}
    p = float(config[keys.TOPK_P_UP])
    shapes = [value.shape for value in received.values()]
    return train_and_encode(
        msg,
        context,
        call_next,
        received,
        lambda tensors: topk.encode(tensors, p),
        lambda result: topk.decode_arrays(result.arrays, shapes)[0],
        keys.STATE_TOPK_RESIDUAL if config[keys.TOPK_ERROR_FEEDBACK] else None,
    )

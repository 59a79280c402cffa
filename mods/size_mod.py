"""Client mod that measures the size of the message it receives and of the reply it sends.

Flower's `message_size_mod` only logs these sizes on the client; this one writes them into the
reply (MetricRecord `message-size`: `down-bytes`, `up-bytes`) so that the strategy logs them in
bandwidth.csv (`client_bytes`) beside its own measurement. Put it first in the mod list: it then
sees the message before any codec mod decodes it and the reply after the codec mod encoded it.
"""

from __future__ import annotations

from flwr.app import Context, Message, MetricRecord
from flwr.clientapp.typing import ClientAppCallable

from mods import keys
from strategies.accounting import wire_bytes


def payload_size_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Add the measured sizes of the incoming message and of the reply to the reply."""
    down_bytes = wire_bytes(msg.content)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    up_bytes = wire_bytes(reply.content)
    reply.content[keys.MESSAGE_SIZE] = MetricRecord(
        {keys.DOWN_BYTES: down_bytes, keys.UP_BYTES: up_bytes}
    )
    return reply

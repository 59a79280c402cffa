"""Client mod at the wire: it opens a packed message, closes the reply, and measures both.

A message in the compact layout (protocol/wire.py) is unpacked into Flower's records before
anything else reads it, and the reply is packed the same way, its frame naming the codec the
request's config names (`none` without one): a reply travels in the layout its request came
in. The mod measures, on the client's side and at the message level (`ledger.levels`: Flower's
serialized object tree), the message as it arrived and the reply as it leaves, and writes both
sizes into the reply's metrics (`client-down-message-bytes`, `client-up-message-bytes`), which
the strategy reads, logs beside its own measurement and removes before anything else looks at
the metrics. The two are computed on either side of the transport, so they disagree when a
message is altered in flight.

The sizes travel as floats, whose encoding has a fixed width: the reply is measured with the
two entries in place (zeros), then the values are written (a packed reply packed again), so
what the client reports is exactly what it sent. Put the mod first in the mod list (after the
state mod): it then sees the message before any codec mod decodes it and the reply after the
codec mod encoded it. A frame that does not unpack fails the ClientApp (the server logs the
reply `failed` with the reason).
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from ledger.levels import message_bytes
from protocol import keys, wire


def wire_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Unpack a compact message, pack its reply likewise; add both client-side sizes."""
    down_bytes = message_bytes(msg)
    packed = wire.is_packed(msg.content)
    if packed:
        msg.content = wire.unpack(msg.content).content
    codec = request_codec(msg)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    content = reply.content
    metrics = content.metric_records.get(keys.METRICS)
    if metrics is not None:  # placeholders of the same width: the sizes include them
        metrics[keys.CLIENT_DOWN_BYTES] = metrics[keys.CLIENT_UP_BYTES] = 0.0
        reply.content = wire.pack(content, codec) if packed else content
        metrics[keys.CLIENT_DOWN_BYTES] = float(down_bytes)
        metrics[keys.CLIENT_UP_BYTES] = float(message_bytes(reply))
    reply.content = wire.pack(content, codec) if packed else content
    return reply


def request_codec(msg: Message) -> str:
    """The codec a request's config names, `none` without one."""
    config = msg.content.config_records.get(keys.CONFIG)
    return str(config.get(keys.CODEC, "none")) if config is not None else "none"

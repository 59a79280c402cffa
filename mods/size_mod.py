"""Client mod that measures, on the client's side, the message it receives and its reply.

It writes both sizes at the message level (`ledger.levels`: Flower's serialized object tree)
into the reply's MetricRecord `metrics` (`client-down-message-bytes`,
`client-up-message-bytes`), which the strategy reads, logs in bandwidth.csv beside its own
measurement and removes before anything else looks at the metrics. The two are computed on
either side of the transport, so they disagree when a message is altered in flight.

The sizes travel as floats, whose encoding has a fixed width: the reply is measured with the
two entries already in place, so what the client reports is exactly what it sent. Put the mod
first in the mod list: it then sees the message before any codec mod decodes it and the
reply after the codec mod encoded it.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from ledger.levels import message_bytes
from protocol import keys


def payload_size_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Add the client-side message sizes of the incoming message and of the reply to it."""
    down_bytes = message_bytes(msg)
    reply = call_next(msg, context)
    if reply.has_error() or keys.METRICS not in reply.content.metric_records:
        return reply
    metrics = reply.content.metric_records[keys.METRICS]
    metrics[keys.CLIENT_DOWN_BYTES] = 0.0
    metrics[keys.CLIENT_UP_BYTES] = 0.0
    up_bytes = message_bytes(reply)
    metrics[keys.CLIENT_DOWN_BYTES] = float(down_bytes)
    metrics[keys.CLIENT_UP_BYTES] = float(up_bytes)
    return reply

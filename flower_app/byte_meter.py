"""A TCP forwarder on loopback that counts the bytes passing each way.

`make deploy` puts one between each SuperNode and the SuperLink: what it counts is what that
node's traffic costs at the transport level (HTTP requests and responses with their headers,
TLS records when TLS is on; TCP and IP headers excluded), over the whole run: registration,
the app bundle, polls, heartbeats and messages. Without TLS it also splits the traffic into its
HTTP exchanges (`exchanges`: path, bytes each way), so that every request is accounted for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from dataclasses import dataclass

from flower_app.http_frames import HttpFrame, HttpFrames
from flower_app.processes import LOOPBACK

CHUNK = 1 << 16
LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Exchange:
    """One HTTP request and its response, as counted on the socket."""

    path: str
    up_bytes: int  # the request: start line, headers, body
    down_bytes: int  # the response: status line, headers, body
    up_body_bytes: int
    down_body_bytes: int


EXCHANGE_COLUMNS = tuple(Exchange.__dataclass_fields__)


class ByteMeter:
    """Forward 127.0.0.1:`port` to 127.0.0.1:`target_port`, counting bytes up and down.

    `up_bytes` counts what the connecting side (a SuperNode) sent, `down_bytes` what it
    received; with `parse_http` (plain HTTP/1.1 only, not TLS) each completed request and
    response pair is appended to `exchanges`. Runs its own event loop in a daemon thread;
    `close()` stops it.
    """

    def __init__(self, target_port: int, parse_http: bool = False) -> None:
        self.target_port = target_port
        self.parse_http = parse_http
        self.up_bytes = 0
        self.down_bytes = 0
        self.exchanges: list[Exchange] = []
        self.parse_errors = 0  # connections whose HTTP could not be split (logged once)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._forward, LOOPBACK, 0), self._loop
        ).result(timeout=10)
        self.port: int = self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        """Stop listening and forwarding."""
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()

    async def _forward(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter):
        try:
            server_in, server_out = await asyncio.open_connection(LOOPBACK, self.target_port)
        except OSError:
            client_out.close()
            return
        requests: deque[HttpFrame] = deque()  # sent, awaiting their response (in order)
        await asyncio.gather(
            self._pump(client_in, server_out, "up_bytes", requests.extend),
            self._pump(server_in, client_out, "down_bytes", self._pair(requests)),
        )

    def _pair(self, requests: deque[HttpFrame]):
        """A callback matching each completed response with the oldest open request."""

        def pair(responses: list[HttpFrame]) -> None:
            for response in responses:
                request = requests.popleft() if requests else HttpFrame("", 0, 0)
                self.exchanges.append(
                    Exchange(
                        request.path,
                        request.wire_bytes,
                        response.wire_bytes,
                        request.body_bytes,
                        response.body_bytes,
                    )
                )

        return pair

    async def _pump(self, source, sink: asyncio.StreamWriter, counter: str, on_frames) -> None:
        frames = HttpFrames() if self.parse_http else None
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await source.read(CHUNK):
                setattr(self, counter, getattr(self, counter) + len(data))
                if frames is not None:
                    try:
                        on_frames(frames.feed(data))
                    except ValueError as error:  # not HTTP/1.1 as expected: count, not split
                        frames = None
                        self._parse_failed(error)
                sink.write(data)
                await sink.drain()
        sink.close()

    def _parse_failed(self, error: ValueError) -> None:
        """Log the first parse error; the connection is forwarded and counted, not split."""
        self.parse_errors += 1
        if self.parse_errors == 1:
            LOG.warning(
                "byte meter on port %s: HTTP parse error (%s); that connection's bytes are "
                "counted but not split into requests",
                self.port,
                error,
            )

"""A TCP forwarder on loopback that counts the bytes passing each way.

`make deploy` puts one between each SuperNode and the SuperLink: what it counts is what that
node's traffic costs at the transport level (HTTP requests and responses with their headers,
TLS records when TLS is on; TCP and IP headers excluded), over the whole run: registration,
the app bundle, polls, heartbeats and messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from flower_app.processes import LOOPBACK

CHUNK = 1 << 16


class ByteMeter:
    """Forward 127.0.0.1:`port` to 127.0.0.1:`target_port`, counting bytes up and down.

    `up_bytes` counts what the connecting side (a SuperNode) sent, `down_bytes` what it
    received. Runs its own event loop in a daemon thread; `close()` stops it.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up_bytes = 0
        self.down_bytes = 0
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
        await asyncio.gather(
            self._pump(client_in, server_out, "up_bytes"),
            self._pump(server_in, client_out, "down_bytes"),
        )

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, counter: str):
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await source.read(CHUNK):
                setattr(self, counter, getattr(self, counter) + len(data))
                sink.write(data)
                await sink.drain()
        sink.close()

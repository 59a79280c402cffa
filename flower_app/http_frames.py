"""Split a byte stream of HTTP/1.1 requests or responses into whole messages, counting bytes.

The SuperNode talks to the SuperLink in protobuf over HTTP/1.1 (httpx, one request at a time
per connection), so a byte counter between the two can tell which request each byte belongs
to: `HttpFrames` is fed the bytes of one direction of one connection as they pass and returns
each request or response once it is complete, with its start line, its total size on the wire
(start line, headers and body) and its body size. Bodies are framed by Content-Length or by
chunked transfer encoding; a message with neither ends at the blank line (no body).
"""

from __future__ import annotations

from dataclasses import dataclass

HEAD_END = b"\r\n\r\n"
CRLF = b"\r\n"


@dataclass(frozen=True)
class HttpFrame:
    """One complete HTTP/1.1 request or response as it travelled."""

    start_line: str  # "POST /v1/fleet/pull-object HTTP/1.1" or "HTTP/1.1 200 OK"
    wire_bytes: int  # start line, headers, blank line and body, as counted on the socket
    body_bytes: int  # the body alone (chunk framing excluded)

    @property
    def path(self) -> str:
        """A request's path ("" for a response)."""
        parts = self.start_line.split(" ")
        return parts[1] if len(parts) >= 2 and not parts[0].startswith("HTTP/") else ""


class HttpFrames:
    """Incremental parser of one direction of one HTTP/1.1 connection."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._head: tuple[str, int] | None = None  # start line, head size of the open message
        self._body_left = 0  # Content-Length bytes still to come
        self._chunked = False
        self._body_bytes = 0
        self._wire_bytes = 0

    def feed(self, data: bytes) -> list[HttpFrame]:
        """Take the next bytes of the stream; return the messages they complete."""
        self._buffer += data
        frames = []
        while (frame := self._next()) is not None:
            frames.append(frame)
        return frames

    def _next(self) -> HttpFrame | None:
        if self._head is None and not self._read_head():
            return None
        if self._chunked:
            if not self._read_chunks():
                return None
        else:
            taken = min(self._body_left, len(self._buffer))
            del self._buffer[:taken]
            self._body_left -= taken
            self._body_bytes += taken
            self._wire_bytes += taken
            if self._body_left:
                return None
        start_line, _ = self._head
        frame = HttpFrame(start_line, self._wire_bytes, self._body_bytes)
        self._head = None
        return frame

    def _read_head(self) -> bool:
        end = self._buffer.find(HEAD_END)
        if end < 0:
            return False
        head = bytes(self._buffer[: end + len(HEAD_END)])
        del self._buffer[: len(head)]
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self._head = (lines[0], len(head))
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._body_left = 0 if self._chunked else int(headers.get("content-length", "0") or 0)
        self._body_bytes = 0
        self._wire_bytes = len(head)
        return True

    def _read_chunks(self) -> bool:
        """Consume whole chunks; True once the last chunk and its trailer have passed."""
        while True:
            line_end = self._buffer.find(CRLF)
            if line_end < 0:
                return False
            size = int(bytes(self._buffer[:line_end]).split(b";")[0], 16)
            if size == 0:  # the last chunk: its line, any trailer, then the blank line
                trailer_end = self._buffer.find(HEAD_END, line_end)
                if trailer_end < 0:
                    return False
                taken = trailer_end + len(HEAD_END)
                self._consume(taken, 0)
                return True
            taken = line_end + len(CRLF) + size + len(CRLF)
            if len(self._buffer) < taken:
                return False
            self._consume(taken, size)

    def _consume(self, taken: int, body: int) -> None:
        del self._buffer[:taken]
        self._wire_bytes += taken
        self._body_bytes += body

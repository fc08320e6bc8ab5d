"""A forward HTTP proxy on loopback through which the browser reaches the network.

Chromium sends every request here (loopback included, via `<-loopback>`), so each host the page
touches, on every redirect, subresource and WebSocket, is checked by the HostPolicy and connected
to at the checked address; Chromium never resolves names itself. HTTPS and WebSockets arrive as
CONNECT tunnels; plain HTTP requests are forwarded one per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

from .addresses import HostPolicy
from .errors import ToolError

REFUSAL_HEADER = "X-Web-Tools-Refused"
_MAX_HEAD = 64 * 1024
_DROPPED_HEADERS = ("proxy-connection:", "connection:", "keep-alive:", "proxy-authorization:")


def _host_port(authority: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(f"//{authority}")
    if not parts.hostname:
        raise ToolError(f"Refused: {authority!r} names no host.")
    return parts.hostname, parts.port or default_port


class GuardProxy:
    def __init__(self, policy: HostPolicy, connect_timeout_s: float) -> None:
        self._policy = policy
        self._connect_timeout_s = connect_timeout_s
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        """Listens on a free loopback port (once); returns the proxy URL for Chromium."""
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, limit=_MAX_HEAD)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *header_lines = head.rstrip("\r\n").split("\r\n")
        method, target, version = request_line.split(" ", 2)
        try:
            if method == "CONNECT":
                upstream_reader, upstream_writer = await self._open(*_host_port(target, 443))
                writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            else:
                url = urlsplit(target)
                if url.scheme != "http":
                    raise ToolError(f"Refused {target!r}: the browser may only use http and https.")
                upstream_reader, upstream_writer = await self._open(*_host_port(url.netloc, 80))
                path = (url.path or "/") + (f"?{url.query}" if url.query else "")
                kept = [line for line in header_lines if not line.lower().startswith(_DROPPED_HEADERS)]
                upstream_writer.write(
                    "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""]).encode("latin-1")
                )
        except ToolError as exc:
            body = str(exc).encode()
            writer.write(
                b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
                + f"{REFUSAL_HEADER}: 1\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            return
        await asyncio.gather(
            self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer), return_exceptions=True
        )

    async def _open(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        failure: BaseException | None = None
        for address in await self._policy.resolve(host, port):
            try:
                return await asyncio.wait_for(asyncio.open_connection(address, port), self._connect_timeout_s)
            except (OSError, TimeoutError) as exc:
                failure = exc
        raise ToolError(f"Could not connect to {host}:{port}: {failure or 'no address'}.")

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._connections, return_exceptions=True)

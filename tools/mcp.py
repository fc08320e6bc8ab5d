"""MCP tool servers: the tools of one Model Context Protocol server, over stdio (a subprocess) or streamable HTTP.

    async with MCPServer.stdio("mcp-server-time") as server:
        print([tool.name for tool in server.tools])
        text = await server.call("get_current_time", {"timezone": "Europe/Warsaw"})

A connection lives in a task of its own: the SDK's transports are anyio task groups that must be left by the
task that entered them, and this way any task may open, call and close. Everything a server says is data
from outside; the swarm marks MCP tools untrusted, so their output reaches agents wrapped as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import anyio
import mcp.types as types
from mcp import ClientSession, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from .errors import ToolError

OPEN_TIMEOUT = 60.0
"""Seconds a server may take to start, initialise and list its tools (a first `npx` run downloads the server)."""
MAX_TOOL_PAGES = 100
"""tools/list pages read at most: a server whose cursor never ends cannot hang the start of a run."""
STDERR_TAIL_BYTES = 1000


@dataclass(frozen=True)
class MCPTool:
    """One tool a server offers: its name, what it does, and the JSON schema of its arguments."""

    name: str
    description: str
    input_schema: dict[str, Any]


class MCPServerError(Exception):
    """A server that cannot be used: it did not start, answer or list its tools, its tools cannot be declared,
    or its connection ended. The message names the server and the reason."""


class MCPServer:
    """A client for one MCP server's tools. `open()` (or `async with`) starts it, initialises the session and
    lists the tools into `tools`; `call()` runs one; `aclose()` ends the session and stops the subprocess.

    A `Swarm` given an MCPServer opens a `clone()` of it for each run, so runs never share a connection.
    """

    def __init__(self, transport: StdioServerParameters | str, *, open_timeout: float = OPEN_TIMEOUT) -> None:
        """`transport`: how to start a stdio server, or the URL of a streamable-HTTP one."""
        self.transport = transport
        self.open_timeout = open_timeout
        self.label = _safe_url(transport) if isinstance(transport, str) else shlex.join(
            [transport.command, *transport.args])
        self.tools: list[MCPTool] = []
        self._session: ClientSession | None = None
        self._owner: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._startup: anyio.CancelScope | None = None

    @classmethod
    def stdio(cls, command: str, args: Sequence[str] = (), *, env: Mapping[str, str] | None = None,
              cwd: str | Path | None = None, open_timeout: float = OPEN_TIMEOUT) -> MCPServer:
        """A server run as `command args`, speaking MCP on its stdin and stdout. It gets the SDK's minimal
        environment (PATH, HOME and a few more, so no keys of ours leak to it) plus `env`."""
        parameters = StdioServerParameters(command=command, args=list(args), env=dict(env) if env else None, cwd=cwd)
        return cls(parameters, open_timeout=open_timeout)

    @classmethod
    def http(cls, url: str, *, open_timeout: float = OPEN_TIMEOUT) -> MCPServer:
        """A server at `url` speaking MCP's streamable HTTP transport."""
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"an MCP server URL starts with http:// or https://, not {url!r}")
        return cls(url, open_timeout=open_timeout)

    def clone(self) -> MCPServer:
        """An unopened server with the same transport and timeout."""
        return MCPServer(self.transport, open_timeout=self.open_timeout)

    async def open(self) -> list[MCPTool]:
        """Start the server, initialise the session and list its tools; MCPServerError says why one failed."""
        if self._owner is not None:
            raise RuntimeError(f"MCP server `{self.label}` is already open; clone() it for a second connection")
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closing = asyncio.Event()
        self._owner = asyncio.create_task(self._serve(ready), name=f"MCP server {self.label}")
        try:
            await ready
        except BaseException:
            await self.aclose()
            raise
        return self.tools

    async def call(self, name: str, arguments: Mapping[str, Any]) -> str:
        """Run tool `name`; its text content (other content described briefly). A result the server marks
        as an error, or a request it refuses, raises ToolError with the server's message."""
        session = self._session
        if session is None:
            raise MCPServerError(f"MCP server `{self.label}` is not open")
        try:
            result = await session.call_tool(name, dict(arguments))
        except MCPError as error:
            if error.code == types.CONNECTION_CLOSED:
                raise MCPServerError(f"MCP server `{self.label}` closed the connection") from None
            raise ToolError(error.message) from None
        text = result_text(result)
        if result.is_error:
            raise ToolError(text or f"{name} failed and gave no reason")
        return text

    async def aclose(self) -> None:
        """End the session and stop the server (a subprocess is stopped and, if need be, killed). Idempotent."""
        owner = self._owner
        if owner is None:
            return
        self._closing.set()
        if self._startup is not None:
            self._startup.cancel()
        # Shielded: a caller cancelled mid-close leaves the owner task to finish stopping the server on its own.
        with contextlib.suppress(Exception):
            await asyncio.shield(owner)
        self._owner = self._session = self._startup = None

    async def __aenter__(self) -> MCPServer:
        await self.open()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"MCPServer({self.label!r})"

    async def _serve(self, ready: asyncio.Future[None]) -> None:
        """The connection's own task: open it, tell `open()` how that went, hold it until `aclose()`."""
        stdio = isinstance(self.transport, StdioServerParameters)
        # A stdio server's stderr goes to a file: it stays off the terminal and can explain a failed start.
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") if stdio else (
                contextlib.nullcontext()) as stderr:
            try:
                connection = (stdio_client(self.transport, errlog=stderr)
                              if isinstance(self.transport, StdioServerParameters)
                              else streamable_http_client(self.transport))
                async with connection as (read, write), ClientSession(read, write) as session:
                    with anyio.move_on_after(self.open_timeout) as self._startup:
                        await session.initialize()
                        self.tools = await _list_tools(session)
                        self._session = session
                    if self._session is None:
                        raise (ConnectionAbortedError("closed while starting") if self._closing.is_set()
                               else TimeoutError(f"no answer within {self.open_timeout:g} s"))
                    if not ready.done():
                        ready.set_result(None)
                    await self._closing.wait()
            except asyncio.CancelledError:
                ready.cancel()
                raise
            except Exception as error:
                if ready.done():  # open() has returned or given up: the error is the connection's end
                    raise
                ready.set_exception(MCPServerError(
                    f"cannot open MCP server `{self.label}`: {_reason(error)}{_stderr_tail(stderr)}"))
            finally:
                self._session = None


async def _list_tools(session: ClientSession) -> list[MCPTool]:
    tools: list[MCPTool] = []
    cursor: str | None = None
    for _ in range(MAX_TOOL_PAGES):
        page = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
        tools += [MCPTool(t.name, t.description or "", t.input_schema) for t in page.tools]
        cursor = page.next_cursor
        if not cursor:
            return tools
    raise MCPServerError(f"the server's tool list goes on past {MAX_TOOL_PAGES} pages")


def result_text(result: types.CallToolResult) -> str:
    """A tool result as text: its content blocks one after another; only structured content if that is all."""
    if not result.content and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(_block_text(block) for block in result.content)


def _block_text(block: types.ContentBlock) -> str:
    match block:
        case types.TextContent():
            return block.text
        case types.ImageContent() | types.AudioContent():
            return f"[{block.type}: {block.mime_type}, {len(block.data) * 3 // 4} bytes, not shown]"
        case types.ResourceLink():
            return f"[resource link: {block.uri}" + (f" ({block.name})" if block.name else "") + "]"
        case types.EmbeddedResource(resource=types.TextResourceContents() as resource):
            return f"[resource {resource.uri}]\n{resource.text}"
        case types.EmbeddedResource(resource=resource):
            return f"[resource {resource.uri}: {resource.mime_type or 'binary'}, not shown]"
    return f"[{getattr(block, 'type', 'unknown')} content, not shown]"


def _reason(error: BaseException) -> str:
    """The innermost cause worth telling: the first leaf of a task group's exception group."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if isinstance(error, MCPError):
        return "the server closed the connection" if error.code == types.CONNECTION_CLOSED else error.message
    if isinstance(error, OSError) and str(error):  # a failed spawn; a timeout (TimeoutError is an OSError)
        return str(error)
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _stderr_tail(stderr: IO[str] | None) -> str:
    """The end of what a stdio server wrote to stderr, read without moving the offset the server writes at."""
    if stderr is None:
        return ""
    size = os.fstat(stderr.fileno()).st_size
    start = max(0, size - STDERR_TAIL_BYTES)
    tail = os.pread(stderr.fileno(), size - start, start).decode("utf-8", errors="replace").strip()
    return f"; its stderr ends: {tail}" if tail else ""


def _safe_url(url: str) -> str:
    """The URL without credentials, query or fragment: the label appears in messages that agents read."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"

"""Running the app: a socket bound before anything is printed, so `--port 0` can say which port it got, and a
thread runner that tests and benchmarks use to serve in-process."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable

import uvicorn
from starlette.applications import Starlette

from .model import LOOPBACK


def bind(host: str, port: int) -> socket.socket:
    """A listening socket: connections made from now on wait in its backlog until the server accepts them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


def _server(app: Starlette) -> uvicorn.Server:
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", http="h11",
                            timeout_keep_alive=30, timeout_graceful_shutdown=5, backlog=2048)
    return uvicorn.Server(config)


def serve(app: Starlette, sock: socket.socket, on_stop: Callable[[], None] | None = None) -> None:
    """Serve on `sock` until SIGINT or SIGTERM, then run `on_stop`. Stopping is what the signal asks for, so it
    returns normally (uvicorn re-raises the signal once it has shut down)."""
    try:
        _server(app).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        if on_stop is not None:
            on_stop()


class ServerThread:
    """The app served on loopback from a background thread (its own event loop), for tests and benchmarks."""

    def __init__(self, app: Starlette, host: str = LOOPBACK, port: int = 0):
        self._sock = bind(host, port)
        self.url = url_of(self._sock)
        self._server = _server(app)
        self._thread = threading.Thread(target=self._run, name="swarm-serve", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._sock]))

    def __enter__(self) -> ServerThread:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()

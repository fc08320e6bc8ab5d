"""Serves a generated offline web on loopback with the standard library's threading HTTP server."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .site import MANIFEST_NAME, SITE_VERSION, SiteManifest, generate_site, load_manifest

LOOPBACK = "127.0.0.1"


def cache_root() -> Path:
    """Where generated sites are kept: $KIMI_SWARM_CACHE, else $XDG_CACHE_HOME/kimi-swarm, else ~/.cache."""
    if env := os.environ.get("KIMI_SWARM_CACHE"):
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "kimi-swarm"


def ensure_site(seed: int = 0, root: Path | str | None = None) -> tuple[Path, SiteManifest]:
    """The site for `seed`, generated once and reused; built in a temp dir and renamed so it is never half-written."""
    site_dir = Path(root or cache_root()) / "offline-web" / f"seed-{seed}-v{SITE_VERSION}"
    if (site_dir / MANIFEST_NAME).is_file():
        return site_dir, load_manifest(site_dir)
    site_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".seed-{seed}-", dir=site_dir.parent))
    try:
        manifest = generate_site(staging, seed)
        try:
            staging.rename(site_dir)
        except OSError:
            if not (site_dir / MANIFEST_NAME).is_file():  # another process did not win the race: a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return site_dir, manifest


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature fixed by the base class
        """Agents fetch thousands of pages; per-request logging would drown the CLI's output."""


class OfflineWeb:
    """A running offline web: `base_url`, `host_port`, `site_dir` (also the local search corpus), `manifest`."""

    def __init__(self, server: ThreadingHTTPServer, site_dir: Path, manifest: SiteManifest):
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="offline-web", daemon=True)
        self.site_dir = site_dir
        self.manifest = manifest
        port = server.server_address[1]
        self.host_port = f"{LOOPBACK}:{port}"
        self.base_url = f"http://{self.host_port}/"

    @classmethod
    def start(cls, seed: int = 0, port: int = 0, cache_dir: Path | str | None = None) -> OfflineWeb:
        """Generate (or reuse) the site for `seed` and serve it on 127.0.0.1:port (0 picks a free port)."""
        site_dir, manifest = ensure_site(seed, cache_dir)
        handler = functools.partial(_QuietHandler, directory=str(site_dir))
        server = ThreadingHTTPServer((LOOPBACK, port), handler)
        server.daemon_threads = True
        web = cls(server, site_dir, manifest)
        web._thread.start()
        return web

    def url(self, url_path: str) -> str:
        return self.base_url + url_path.lstrip("/")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> OfflineWeb:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def serve_forever(port: int = 8000, seed: int = 0) -> None:
    """Serve the offline web in the foreground until interrupted (the `swarm serve-web` command)."""
    web = OfflineWeb.start(seed=seed, port=port)
    print(f"Offline web (seed {seed}, {len(web.manifest.page_paths)} pages) at {web.base_url}", flush=True)
    print(f"Site files: {web.site_dir}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        web.close()

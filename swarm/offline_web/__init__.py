"""A seeded fictional encyclopedia served on loopback: the research web of the embedded default model."""

from .server import OfflineWeb, ensure_site, serve_forever
from .site import SiteManifest, generate_site, load_manifest
from .world import ArchivedPage, Entity

__all__ = ["ArchivedPage", "Entity", "OfflineWeb", "SiteManifest", "ensure_site", "generate_site",
           "load_manifest", "serve_forever"]

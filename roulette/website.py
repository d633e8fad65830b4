"""The HTTP side: one :class:`~twisted.web.server.Site` serving the page,
``/ws`` (the WebSocket) and ``/healthz`` on one port."""

from __future__ import annotations

import json
from pathlib import Path

from autobahn.twisted.resource import WebSocketResource
from twisted.python.filepath import FilePath
from twisted.web import pages, resource, server, static
from twisted.web.iweb import IRequest

from roulette.server import Lobby, RouletteFactory


def default_web_root() -> Path:
    """The page shipped with roulette.

    An installed wheel carries it inside the package; a source checkout (and an
    editable install) keeps it in ``web/`` beside the package.
    """
    package = Path(__file__).resolve().parent
    for candidate in (package / "web", package.parent / "web"):
        if (candidate / "index.html").is_file():
            return candidate
    raise FileNotFoundError("the roulette page (web/index.html) is not installed")


class StaticFiles(static.File):
    """Static files without directory listings."""

    childNotFound = pages.notFound("No Such Resource", "File not found.")
    forbidden = pages.forbidden("Forbidden", "Access to this resource is forbidden.")

    def directoryListing(self) -> resource.IResource:
        return pages.notFound("No Such Resource", "No such page.")

    def createSimilarFile(self, path: str) -> static.File:
        f = super().createSimilarFile(path)
        f.__class__ = StaticFiles
        return f


class Health(resource.Resource):
    """``GET /healthz``: the lobby's counts as JSON."""

    isLeaf = True

    def __init__(self, lobby: Lobby) -> None:
        super().__init__()
        self._lobby = lobby

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return json.dumps(self._lobby.stats().as_dict()).encode("ascii")


def make_site(lobby: Lobby, web_root: Path, factory: RouletteFactory) -> server.Site:
    """One site: the page at ``/``, the WebSocket at ``/ws``, counts at ``/healthz``."""
    root = StaticFiles(FilePath(str(web_root)).path)
    root.putChild(b"ws", WebSocketResource(factory))
    root.putChild(b"healthz", Health(lobby))
    return server.Site(root)

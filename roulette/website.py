"""The HTTP side: one :class:`~twisted.web.server.Site` serving the page,
``/ws`` (the WebSocket) and ``/healthz`` on one port."""

from __future__ import annotations

import json
import re
from pathlib import Path

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.web import http, pages, resource, server, static
from twisted.web.iweb import IRequest

from roulette.server import Lobby, RouletteFactory

log = Logger()
_CONNECTION_DONE = Failure(ConnectionDone())

#: Seconds from TCP accept until a request (or the WebSocket upgrade) is in.
HANDSHAKE_TIMEOUT = 10.0

_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


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


class DeadlineChannel(http.HTTPChannel):
    """An HTTP connection with an absolute deadline for each request.

    Twisted's idle timeout restarts with every byte, so a client dripping a
    header line every few seconds would hold a connection forever.  Here the
    clock starts when the connection is accepted (or the previous response is
    done, for keep-alive) and stops only when a whole request, body included,
    has arrived; a WebSocket upgrade is finished by then.
    """

    handshake_timeout = HANDSHAKE_TIMEOUT
    _deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm()

    def allContentReceived(self) -> None:
        self._disarm()
        super().allContentReceived()

    def requestDone(self, request: http.Request) -> None:
        # Armed first: a pipelined request already buffered disarms it again.
        self._arm()
        super().requestDone(request)

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self._disarm()
        super().connectionLost(reason)

    def _arm(self) -> None:
        self._disarm()
        if self.handshake_timeout > 0:
            self._deadline = self.callLater(self.handshake_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        log.info(
            "dropping {peer}: no complete request within {timeout} s",
            peer=self.transport.getPeer() if self.transport else None,
            timeout=self.handshake_timeout,
        )
        if self.transport is not None:
            self.transport.abortConnection()


class SecureRequest(server.Request):
    """A request whose every response carries the page's security headers."""

    def process(self) -> None:
        host = (self.getHeader(b"host") or b"").decode("latin-1")
        sockets = f" ws://{host} wss://{host}" if _HOST.fullmatch(host) else ""
        headers = self.responseHeaders
        headers.setRawHeaders(
            b"Content-Security-Policy",
            [
                (
                    "default-src 'self'; script-src 'self'; style-src 'self'; "
                    "img-src 'self' data: blob:; "
                    f"connect-src 'self'{sockets}; "
                    "object-src 'none'; base-uri 'none'; form-action 'self'; "
                    "frame-ancestors 'none'"
                ).encode("latin-1")
            ],
        )
        headers.setRawHeaders(b"X-Content-Type-Options", [b"nosniff"])
        headers.setRawHeaders(b"Referrer-Policy", [b"no-referrer"])
        headers.setRawHeaders(b"X-Frame-Options", [b"DENY"])
        super().process()


class RouletteSite(server.Site):
    """The one site: deadlines on every connection, security headers on every
    response."""

    protocol = DeadlineChannel  # type: ignore[assignment]
    requestFactory = SecureRequest

    def __init__(
        self, root: resource.IResource, handshake_timeout: float = HANDSHAKE_TIMEOUT
    ) -> None:
        super().__init__(root)
        self.handshake_timeout = handshake_timeout

    def buildProtocol(self, addr: object) -> DeadlineChannel:  # type: ignore[override]
        channel = super().buildProtocol(addr)
        channel.handshake_timeout = self.handshake_timeout
        return channel


def make_site(
    lobby: Lobby,
    web_root: Path,
    factory: RouletteFactory,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
) -> server.Site:
    """One site: the page at ``/``, the WebSocket at ``/ws``, counts at ``/healthz``."""
    root = StaticFiles(FilePath(str(web_root)).path)
    root.putChild(b"ws", WebSocketResource(factory))
    root.putChild(b"healthz", Health(lobby))
    return RouletteSite(root, handshake_timeout)

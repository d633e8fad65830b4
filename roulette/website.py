"""The HTTP side: one :class:`~twisted.web.server.Site` serving the page,
``/ws`` (the WebSocket) and ``/healthz`` on one port."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import protocol
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

#: A request line that opens the WebSocket (the handshake checks the rest).
_UPGRADE_LINE = re.compile(rb"GET /ws(?:\?[^ ]*)? HTTP/1\.1\r?\n")
_CONNECTING = WebSocketProtocol.STATE_CONNECTING
#: Bytes read, at most, while looking for the end of the request line.
_MAX_REQUEST_LINE = 4096

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

    def connectionMade(self) -> None:
        super().connectionMade()
        self._deadline = Deadline("no complete request")
        self._arm()

    def allContentReceived(self) -> None:
        self._deadline.disarm()
        super().allContentReceived()

    def requestDone(self, request: http.Request) -> None:
        # Armed first: a pipelined request already buffered disarms it again.
        self._arm()
        super().requestDone(request)

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self._deadline.disarm()
        super().connectionLost(reason)

    def _arm(self) -> None:
        self._deadline.arm(self.callLater, self.handshake_timeout, self.transport)


class Deadline:
    """A connection's deadline: when it passes, the connection is aborted."""

    __slots__ = ("_call", "_why")

    def __init__(self, why: str) -> None:
        self._why = why
        self._call: IDelayedCall | None = None

    @property
    def armed(self) -> bool:
        return self._call is not None

    def arm(self, call_later: Callable[..., IDelayedCall], timeout: float, transport: Any) -> None:
        self.disarm()
        if timeout > 0:
            self._call = call_later(timeout, self._expire, transport, timeout)

    def disarm(self) -> None:
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _expire(self, transport: Any, timeout: float) -> None:
        self._call = None
        if transport is None:
            return
        log.info(
            "dropping {peer}: {why} within {timeout} s",
            peer=transport.getPeer(),
            why=self._why,
            timeout=timeout,
        )
        transport.abortConnection()


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
    response, and connections that open with the WebSocket upgrade handed to
    Autobahn directly (see :class:`FirstRequest`)."""

    protocol = DeadlineChannel  # type: ignore[assignment]
    requestFactory = SecureRequest

    def __init__(
        self,
        root: resource.IResource,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        websocket: RouletteFactory | None = None,
    ) -> None:
        super().__init__(root)
        self.handshake_timeout = handshake_timeout
        self.websocket = websocket

    def buildProtocol(self, addr: object) -> FirstRequest:  # type: ignore[override]
        return FirstRequest(self, addr)

    def http_channel(self, addr: object) -> DeadlineChannel:
        channel = super().buildProtocol(addr)
        channel.handshake_timeout = self.handshake_timeout
        return channel


class FirstRequest(protocol.Protocol):
    """Reads a connection's request line, then hands the connection over.

    Nearly every connection to ``/ws`` opens with the upgrade, and Autobahn
    parses that request itself: the connection goes straight to it, sparing
    twisted.web's request, resource lookup and response headers, a third of
    the cost of accepting a chat.  Every other connection goes to the site's
    HTTP channel, where ``/ws`` is still served (after a keep-alive request,
    say).  The deadline runs from accept until the WebSocket is open; an HTTP
    channel gets its own once the request line is in.
    """

    _inner: protocol.Protocol | None = None

    def __init__(self, site: RouletteSite, addr: object) -> None:
        self._site = site
        self._addr = addr
        self._buffer = b""
        self._deadline = Deadline("no WebSocket opened")

    def connectionMade(self) -> None:
        site = self._site
        self._deadline.arm(site.reactor.callLater, site.handshake_timeout, self.transport)

    def dataReceived(self, data: bytes) -> None:
        inner = self._inner
        if inner is not None:
            inner.dataReceived(data)
            if self._deadline.armed and getattr(inner, "state", None) != _CONNECTING:
                self._deadline.disarm()
            return
        self._buffer += data
        if b"\n" not in self._buffer and len(self._buffer) < _MAX_REQUEST_LINE:
            return
        site = self._site
        if site.websocket is not None and _UPGRADE_LINE.match(self._buffer):
            inner = site.websocket.buildProtocol(self._addr)
        else:
            self._deadline.disarm()
            inner = site.http_channel(self._addr)
        self._inner = inner
        inner.makeConnection(self.transport)
        buffered, self._buffer = self._buffer, b""
        self.dataReceived(buffered)

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self._deadline.disarm()
        if self._inner is not None:
            self._inner.connectionLost(reason)


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
    return RouletteSite(root, handshake_timeout, websocket=factory)

"""The HTTP side: one :class:`~twisted.web.server.Site` serving the page,
``/ws`` (the WebSocket) and ``/healthz`` on one port."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import protocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IPushProducer,
    ISSLTransport,
    ITCPTransport,
)
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.web import http, pages, resource, server, static
from twisted.web.iweb import IRequest

from roulette.abuse import SocketLimits, client_host, request_scheme, socket_key
from roulette.lobby import Gate, Lobby
from roulette.logs import Tally, excerpt
from roulette.metrics import Metrics, of_site
from roulette.server import RouletteFactory, RouletteProtocol
from roulette.transport import peer_host

log = Logger()
_CONNECTION_DONE = Failure(ConnectionDone())

#: Seconds from TCP accept until a request (or the WebSocket upgrade) is in.
HANDSHAKE_TIMEOUT = 10.0
#: Seconds from a request's arrival until its response has been written.
RESPONSE_TIMEOUT = 30.0
#: TCP connections of any kind one address may hold open (IPv6: per /64).
MAX_SOCKETS_PER_ADDRESS = 64

#: A request line that opens the WebSocket (the handshake checks the rest).
_UPGRADE_LINE = re.compile(rb"GET /ws(?:\?[^ ]*)? HTTP/1\.1\r?\n")
_OPEN = WebSocketProtocol.STATE_OPEN
_CONNECTING = WebSocketProtocol.STATE_CONNECTING
#: Bytes read, at most, while looking for the end of the request line.
_MAX_REQUEST_LINE = 4096
#: The limits twisted.web puts on a request's head, on both paths: bytes of
#: the request line and headers together, and header lines.
MAX_HEADER_BYTES = http.HTTPChannel.totalHeadersSize
MAX_HEADERS = http.HTTPChannel.maxHeaders
#: Methods the site serves; anything else is refused before its body is read.
_METHODS = (b"GET", b"HEAD")
_HOST_HEADER = re.compile(rb"\r\nhost[ \t]*:[ \t]*([^\r]*)", re.IGNORECASE)
_PROTO_HEADER = re.compile(rb"\r\nx-forwarded-proto[ \t]*:[ \t]*([^\r]*)", re.IGNORECASE)
_BODY_HEADER = re.compile(
    rb"\r\n(content-length|transfer-encoding)[ \t]*:[ \t]*([^\r]*)", re.IGNORECASE
)

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
    """Static files without directory listings, and only regular files inside
    the web root: no names starting with a dot, no symbolic link leading out
    of the root, no device or pipe."""

    # Both ignores: static.File's defaults (deprecated private classes) fix
    # these attributes' inferred types, but any IResource serves.
    childNotFound = pages.notFound(  # type: ignore[assignment]
        "No Such Resource", "File not found."
    )
    forbidden = pages.forbidden(  # type: ignore[assignment]
        "Forbidden", "Access to this resource is forbidden."
    )
    #: The web root with every symbolic link resolved.
    _root: str | None = None

    def directoryListing(self) -> resource.IResource:
        return pages.notFound("No Such Resource", "No such page.")

    def createSimilarFile(self, path: str) -> static.File:
        # Unannotated in Twisted; the copy becomes a StaticFiles on the next line.
        f: StaticFiles = super().createSimilarFile(path)  # type: ignore[no-untyped-call]
        f.__class__ = StaticFiles
        f._root = self._root_path()
        return f

    def _root_path(self) -> str:
        if self._root is None:
            self._root = os.path.realpath(self.path)
        return self._root

    def getChild(self, path: bytes, request: IRequest) -> resource.IResource:
        if path.startswith(b"."):
            return self.childNotFound
        try:
            path.decode("utf-8")
        except UnicodeDecodeError:
            return self.childNotFound
        # File.getChild is unannotated.
        child: resource.IResource = super().getChild(path, request)  # type: ignore[no-untyped-call]
        if isinstance(child, StaticFiles) and not self._servable(child.path):
            return self.childNotFound
        return child

    def _servable(self, path: str) -> bool:
        root = self._root_path()
        real = os.path.realpath(path)
        if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
            return False
        try:
            mode = os.stat(real).st_mode
        except OSError:
            return True  # nothing there: static.File answers 404
        return stat.S_ISREG(mode) or stat.S_ISDIR(mode)


class _LobbyAnswer(resource.Resource):
    """A JSON answer about the lobby, never cached."""

    isLeaf = True

    def __init__(self, lobby: Lobby) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self._lobby = lobby

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return json.dumps(self.answer(request)).encode("ascii")

    def answer(self, request: IRequest) -> dict[str, object]:
        raise NotImplementedError


class Health(_LobbyAnswer):
    """``GET /healthz``: the lobby's counts as JSON (the pool's, with
    ``--redis``, and the id of the node that answered)."""

    def answer(self, request: IRequest) -> dict[str, object]:
        answer: dict[str, object] = {**self._lobby.stats().as_dict()}
        node = getattr(self._lobby.matchmaker, "node", None)
        if node is not None:  # one node of a pool (--redis): which answered
            answer["node"] = node
        return answer


class Admission(_LobbyAnswer):
    """``GET /admission``: whether a WebSocket from the caller's address
    would be admitted now, and if not why (``Lobby.admission``).  A page
    cannot see why its WebSocket was refused (HTTP 429, 403 or 503 are
    hidden from it); it asks here."""

    def answer(self, request: IRequest) -> dict[str, object]:
        gate = self._lobby.gate
        forwarded = request.getHeader(b"x-forwarded-for")
        address = client_host(
            peer_host(request.transport),  # type: ignore[attr-defined]  # a Request's transport
            [forwarded.decode("latin-1")] if forwarded else [],
            gate.trust_proxy,
        )
        return self._lobby.admission(gate.hasher.keys(address))


#: The most rules a rules file may hold, and the longest one (characters).
MAX_RULES = 30
MAX_RULE_LENGTH = 300


def load_rules(path: Path) -> list[str]:
    """The rules in a rules file: one per line; empty lines and lines that
    start with ``#`` are skipped.  ``ValueError`` says what is wrong."""
    with open(path, encoding="utf-8") as f:
        text = f.read(64 * 1024 + 1)
    if len(text) > 64 * 1024:
        raise ValueError("is over 64 KiB")
    rules = [line.strip() for line in text.splitlines()]
    rules = [rule for rule in rules if rule and not rule.startswith("#")]
    if len(rules) > MAX_RULES:
        raise ValueError(f"holds {len(rules)} rules; at most {MAX_RULES}")
    for rule in rules:
        if len(rule) > MAX_RULE_LENGTH:
            raise ValueError(f"has a rule over {MAX_RULE_LENGTH} characters: {rule[:40]!r}...")
    return rules


class Welcome(resource.Resource):
    """``GET /welcome``: whether the page shows its first-visit card
    (``--no-welcome`` turns it off), and the site's rules for it."""

    isLeaf = True

    def __init__(self, rules: list[str] | None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        answer = {"welcome": False} if rules is None else {"welcome": True, "rules": rules}
        self._body = json.dumps(answer, ensure_ascii=False).encode("utf-8")

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        return self._body


class DeadlineChannel(http.HTTPChannel):
    """An HTTP connection with an absolute deadline in every phase.

    Twisted's idle timeout restarts with every byte, so a client dripping a
    header line every few seconds would hold a connection forever.  Here the
    connection's one :class:`Deadline` (started by :class:`FirstRequest` when
    the connection was accepted, and not restarted when the request line is
    in) runs until a whole request has arrived; then ``response_timeout``
    runs until its response is written; then ``handshake_timeout`` again,
    until the next request is in (keep-alive) or the client has read the last
    response and the connection is closed.

    The site serves GET and HEAD only, without bodies: a request with another
    method (405) or with a body (413) is refused as soon as its headers are
    in, before any of the body is read, and the connection is closed.
    """

    handshake_timeout = HANDSHAKE_TIMEOUT
    response_timeout = RESPONSE_TIMEOUT
    #: The connection's :class:`FirstRequest`, which handed it over.
    first: FirstRequest | None = None
    deadline: Deadline | None = None
    #: Where bytes go once ``/ws`` has taken the connection over.
    _websocket: protocol.Protocol | None = None
    _refused = False

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        if self.deadline is None:  # not behind a FirstRequest
            self.deadline = Deadline(getattr(self.factory, "tally", None))
            self._arm(self.handshake_timeout, "no complete request")

    def allHeadersReceived(self) -> None:
        code = self._refusal()
        if code is not None:
            self._refuse(code)
            return
        super().allHeadersReceived()  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def _refusal(self) -> int | None:
        if self._command not in _METHODS:
            return 405
        if self.length != 0:  # a Content-Length above 0, or chunked
            return 413
        return None

    def _refuse(self, code: int) -> None:
        self._refused = True
        # Whatever else arrives (the body, more requests) is not read: the
        # ignore is for replacing the methods on this instance, on purpose.
        self.dataReceived = self.rawDataReceived = _ignore  # type: ignore[method-assign]
        self._transferDecoder = None
        why = "a body" if code == 413 else "a method other than GET or HEAD"
        _write_refusal(self.transport, getattr(self.factory, "tally", None), code, why)
        of_site(self.factory).refused_http(code)
        self.loseConnection()  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def allContentReceived(self) -> None:
        if self._refused:
            return
        self._arm(self.response_timeout, "response not taken")
        super().allContentReceived()  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def requestDone(self, request: http.Request) -> None:
        # Armed first: a pipelined request already buffered re-arms it.
        why = "no complete request" if self.persistent else "response not taken"
        self._arm(self.handshake_timeout, why)
        super().requestDone(request)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def rawDataReceived(self, data: bytes) -> None:
        websocket = self._websocket
        if websocket is not None:
            # The rest of a read in which /ws took the connection over.
            websocket.dataReceived(data)
            return
        super().rawDataReceived(data)

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        if self.deadline is not None:
            self.deadline.disarm()
        super().connectionLost(reason)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def _arm(self, timeout: float, why: str) -> None:
        if self.deadline is not None:
            self.deadline.arm(self.callLater, timeout, self.transport, why)


def _ignore(data: bytes) -> None:
    pass


_REASONS = {
    400: b"Bad Request",
    405: b"Method Not Allowed",
    413: b"Content Too Large",
    421: b"Misdirected Request",
    426: b"Upgrade Required",
    431: b"Request Header Fields Too Large",
}


def _write_refusal(transport: Any, tally: Tally | None, code: int, why: str) -> None:
    """Answer a request with ``code`` and a response that ends the
    connection (the caller closes it), and count it in the log."""
    if tally is not None:
        tally.note(
            f"refused {code}",
            "refused a request with {why} from {peer}: {code} {phrase}",
            why=why,
            code=code,
            phrase=_REASONS[code].decode("ascii"),
            peer=peer_host(transport),
        )
    allow = b"Allow: GET, HEAD\r\n" if code == 405 else b""
    transport.write(
        b"HTTP/1.1 %d %s\r\n%sContent-Length: 0\r\nConnection: close\r\n\r\n"
        % (code, _REASONS[code], allow)
    )


class Deadline:
    """A connection's deadline: when it passes, the connection is aborted.

    Connections dropped this way are logged through a :class:`Tally`: at
    most one line a minute for each reason, whatever their number.
    """

    __slots__ = ("_call", "_count", "_tally", "_why")

    #: What a connection that never sent a byte was dropped for.  Browsers
    #: open spare connections ahead of need and leave most of them unused:
    #: that is logged at debug level only.
    SILENT = "no request"

    def __init__(
        self, tally: Tally | None = None, count: Callable[[str], None] | None = None
    ) -> None:
        self._tally = tally
        #: Told why, when the deadline drops a connection (the metrics' refusals).
        self._count = count
        self._call: IDelayedCall | None = None
        self._why = ""

    @property
    def armed(self) -> bool:
        return self._call is not None

    def arm(
        self, call_later: Callable[..., IDelayedCall], timeout: float, transport: Any, why: str
    ) -> None:
        self.disarm()
        self._why = why
        if timeout > 0:
            self._call = call_later(timeout, self._expire, transport, timeout)

    def rename(self, why: str) -> None:
        """Give the running deadline another reason, keeping its time."""
        self._why = why

    def disarm(self) -> None:
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _expire(self, transport: Any, timeout: float) -> None:
        self._call = None
        if transport is None:
            return
        why = self._why
        fields = {"peer": peer_host(transport), "why": why, "timeout": timeout}
        silent = why == Deadline.SILENT
        if self._tally is not None:
            level = LogLevel.debug if silent else LogLevel.warn
            self._tally.note(
                f"deadline: {why}", "dropping {peer}: {why} within {timeout} s", level, **fields
            )
        else:
            level = LogLevel.debug if silent else LogLevel.info
            log.emit(level, "dropping {peer}: {why} within {timeout} s", **fields)
        if self._count is not None:
            self._count(why)
        transport.abortConnection()


def _for_public_host(request: server.Request) -> bool:
    """Whether the request's ``Host`` names the server (``--public-host``)."""
    # Site.buildProtocol sets the channel's site; HTTPChannel does not declare it.
    factory = getattr(request.channel.site, "websocket", None)  # type: ignore[attr-defined]
    gate = getattr(getattr(factory, "lobby", None), "gate", None)
    if gate is None or not gate.hosts:
        return True
    headers = request.requestHeaders
    return _serves(
        gate,
        headers.getRawHeaders(b"host") or [],
        headers.getRawHeaders(b"x-forwarded-proto") or [],
        request.isSecure(),
    )


def _serves(gate: Gate, hosts: Sequence[bytes], protos: Sequence[bytes], secure: bool) -> bool:
    """Whether a request with these ``Host`` and ``X-Forwarded-Proto`` lines
    names one of the gate's public hosts.  Twisted would answer a request
    with two ``Host`` lines by the last one; here such a request, like one
    without any, names none."""
    host = hosts[0].decode("latin-1") if len(hosts) == 1 else None
    scheme = request_scheme(secure, [p.decode("latin-1") for p in protos], gate.trust_proxy)
    return gate.hosts.allows(host, scheme)


class SecureRequest(server.Request):
    """A request whose every response carries the page's security headers,
    and no ``Server`` header naming the software and its version."""

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if (name.encode("latin-1") if isinstance(name, str) else name).lower() == b"server":
            return
        super().setHeader(name, value)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def process(self) -> None:
        public = _for_public_host(self)
        host = (self.getHeader(b"host") or b"").decode("latin-1")
        # A refused Host is not echoed, not even in the policy.
        sockets = f" ws://{host} wss://{host}" if public and _HOST.fullmatch(host) else ""
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
        if not public:
            body = b"Misdirected request: this server does not answer for that host.\n"
            of_site(getattr(self.channel, "site", None)).refused_http(421)
            self.setResponseCode(421, b"Misdirected Request")
            self.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            self.setHeader(b"Content-Length", b"%d" % len(body))
            self.setHeader(b"Cache-Control", b"no-store")
            self.write(body)  # type: ignore[no-untyped-call]  # unannotated in Twisted
            self.finish()  # type: ignore[no-untyped-call]  # unannotated in Twisted
            return
        super().process()  # type: ignore[no-untyped-call]  # unannotated in Twisted


class RouletteSite(server.Site):
    """The one site: caps on open connections, deadlines on every connection,
    security headers on every response, and connections that open with the
    WebSocket upgrade handed to Autobahn directly (see :class:`FirstRequest`).

    When as many connections are open as ``sockets`` allows in all, the
    listening ports stop accepting (new connections wait in the kernel's
    backlog) until one closes.
    """

    # A bare HTTP/1.1 channel, where HTTPFactory declares its HTTP/2-capable wrapper.
    protocol = DeadlineChannel  # type: ignore[assignment]
    requestFactory = SecureRequest

    def __init__(
        self,
        root: resource.IResource,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        websocket: RouletteFactory | None = None,
        response_timeout: float = RESPONSE_TIMEOUT,
        sockets: SocketLimits | None = None,
    ) -> None:
        # Site.__init__ is unannotated.
        super().__init__(root, logFormatter=access_log_line)  # type: ignore[no-untyped-call]
        self.handshake_timeout = handshake_timeout
        self.response_timeout = response_timeout
        self.websocket = websocket
        self.sockets = sockets if sockets is not None else SocketLimits(0, 0)
        self.tally = websocket.tally if websocket is not None else Tally(self.reactor)
        self.metrics = websocket.metrics if websocket is not None else Metrics()
        self._ports: list[IListeningPort] = []
        self._paused = False

    # Not an HTTP channel, as HTTPFactory's signature says: a FirstRequest,
    # which hands the connection to one (http_channel) or to Autobahn.
    def buildProtocol(self, addr: IAddress | None) -> FirstRequest:  # type: ignore[override]
        return FirstRequest(self, addr)

    def http_channel(self, addr: IAddress | None, first: FirstRequest) -> DeadlineChannel:
        # Site.buildProtocol is unannotated; it builds a ``protocol``, a DeadlineChannel.
        channel: DeadlineChannel = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        channel.handshake_timeout = self.handshake_timeout
        channel.response_timeout = self.response_timeout
        channel.first = first
        channel.deadline = first.deadline
        return channel

    # -- open connections --------------------------------------------------------

    def listening(self, port: IListeningPort) -> None:
        """Pause and resume ``port`` with the cap on open connections."""
        self._ports.append(port)
        if self._paused:
            _stop_accepting(port)

    def open_socket(self, key: str | None, peer: str) -> bool:
        """Count a new connection from ``key``; whether it may stay open."""
        sockets = self.sockets
        refused = sockets.open(key)
        if refused == "address":
            self.metrics.refused("sockets_per_address")
            self.tally.note(
                "sockets per address",
                "refusing connections from {peer}: it holds {n} open (--max-sockets-per-ip)",
                peer=peer,
                n=sockets.max_per_address,
            )
            return False
        if refused == "total":
            self.metrics.refused("sockets_total")
            self.tally.note(
                "sockets in all",
                "refusing a connection from {peer}: {n} are open (--max-sockets)",
                peer=peer,
                n=sockets.total,
            )
        if sockets.full and not self._paused:
            self._paused = True
            self.tally.note(
                "accepting paused",
                "{n} connections open, the most allowed (--max-sockets): "
                "accepting no more until one closes",
                n=sockets.total,
            )
            for port in self._ports:
                _stop_accepting(port)
        return refused is None

    def close_socket(self, key: str | None) -> None:
        self.sockets.close(key)
        if self._paused and not self.sockets.full:
            self._paused = False
            for port in self._ports:
                _start_accepting(port)


def _stop_accepting(port: IListeningPort) -> None:
    # Twisted's ports are file descriptors the reactor reads to accept.
    stop = getattr(port, "stopReading", None)
    if stop is not None:
        stop()


def _start_accepting(port: IListeningPort) -> None:
    start = getattr(port, "startReading", None)
    if start is not None and getattr(port, "connected", False):
        start()


#: A session's token in a URL (``/ws?session=``): never written to a log.
_SESSION_TOKEN = re.compile(rb"(?<=[?&]session=)[^&#]*")


def access_log_line(timestamp: str, request: http.Request) -> str:
    """The combined log format, with every field a client chose cut short
    and escaped, and a session's token left out."""
    address = request.getClientAddress()
    return '"{}" - - {} "{} {} {}" {} {} "{}" "{}"'.format(
        excerpt(getattr(address, "host", "-")),
        timestamp,
        excerpt(request.method),
        excerpt(_SESSION_TOKEN.sub(b"-", request.uri)),
        excerpt(request.clientproto),
        int(request.code),
        request.sentLength or "-",
        excerpt(request.getHeader(b"referer") or "-"),
        excerpt(request.getHeader(b"user-agent") or "-"),
    )


class WebSocketEntry(resource.Resource):
    """``/ws`` reached through the site: after a keep-alive request, or with a
    request line that the direct path does not take (``/ws/``, say).

    The connection is handed to Autobahn through its :class:`FirstRequest`,
    which keeps counting it and delivering its bytes.  RFC 6455 requires
    HTTP/1.1 or later: an older request is refused (426).
    """

    isLeaf = True

    def render(self, request: http.Request) -> bytes | int:
        channel = request.channel
        first = getattr(channel, "first", None)
        if request.clientproto != b"HTTP/1.1" or first is None:
            of_site(getattr(channel, "site", None)).refused_http(426)
            request.setResponseCode(426)
            request.setHeader(b"Upgrade", b"websocket")
            request.setHeader(b"Connection", b"close")
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"A WebSocket needs an HTTP/1.1 upgrade request.\n"
        first.upgrade(request, channel)
        return server.NOT_DONE_YET


class FirstRequest(protocol.Protocol):
    """Every connection's outermost protocol.

    It holds the connection's place under the caps on open connections
    (:meth:`RouletteSite.open_socket`) and its :class:`Deadline` from accept
    on, reads its request line, and hands the connection over.

    Nearly every connection to ``/ws`` opens with the upgrade, and Autobahn
    parses that request itself: the connection goes straight to it, sparing
    twisted.web's request, resource lookup and response headers, a third of
    the cost of accepting a chat.  Its head is read here first, with the
    limits twisted.web applies (:data:`MAX_HEADER_BYTES`,
    :data:`MAX_HEADERS`, 431), and an upgrade with a body is refused (413)
    before the body is read.  Every other connection goes to the site's HTTP
    channel, where ``/ws`` is still served (:class:`WebSocketEntry`).  The
    deadline runs until the WebSocket is open.
    """

    # Slots: a connection that stays open a long time costs less memory.
    __slots__ = (
        "_addr",
        "_buffer",
        "_counted",
        "_done",
        "_inner",
        "_key",
        "_reading_head",
        "_scanned",
        "_site",
        "deadline",
    )

    def __init__(self, site: RouletteSite, addr: IAddress | None) -> None:
        self._site = site
        self._addr = addr
        self._buffer = b""
        self._scanned = 0
        self.deadline = Deadline(site.tally, site.metrics.deadline)
        self._inner: protocol.Protocol | None = None
        #: Whether this connection holds a place under the caps, and its key.
        self._counted = False
        self._key: str | None = None
        #: Reading the head of an upgrade for the direct path.
        self._reading_head = False
        #: Refused: nothing more is read.
        self._done = False

    def connectionMade(self) -> None:
        site = self._site
        peer = peer_host(self.transport)
        key = socket_key(peer)
        if not site.open_socket(key, peer):
            self._done = True
            # ITransport lacks abortConnection; every connection served here
            # (TCP, TLS, UNIX, or a wrapper of one) has it.
            cast(ITCPTransport, self.transport).abortConnection()
            return
        self._counted = True
        self._key = key
        self.deadline.arm(
            site.reactor.callLater, site.handshake_timeout, self.transport, Deadline.SILENT
        )

    def dataReceived(self, data: bytes) -> None:
        inner = self._inner
        if inner is not None:
            inner.dataReceived(data)
            return
        if self._done:
            return
        if not self._buffer and not self._reading_head:
            # The first bytes: the same deadline, with the reason it now has.
            self.deadline.rename("no complete request")
        self._buffer += data
        if self._reading_head:
            self._read_head()
            return
        if b"\n" not in self._buffer and len(self._buffer) < _MAX_REQUEST_LINE:
            return
        site = self._site
        if site.websocket is not None and _UPGRADE_LINE.match(self._buffer):
            self._reading_head = True
            self._read_head()
            return
        channel: protocol.Protocol = site.http_channel(self._addr, self)
        self._inner = channel
        channel.makeConnection(self.transport)
        buffered, self._buffer = self._buffer, b""
        channel.dataReceived(buffered)

    def _read_head(self) -> None:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n", max(0, self._scanned - 3))
        if end < 0:
            self._scanned = len(buffer)
            if len(buffer) > MAX_HEADER_BYTES:
                self._refuse(431, "headers too large")
            return
        end += 4
        head, rest = buffer[:end], buffer[end:]
        self._buffer = b""
        if end > MAX_HEADER_BYTES:
            self._refuse(431, "headers too large")
            return
        if head.count(b"\n") - 2 > MAX_HEADERS:
            self._refuse(431, "too many headers")
            return
        for name, value in _BODY_HEADER.findall(head):
            value = value.strip()
            if name.lower() == b"content-length" and not value.isdigit():
                self._refuse(400, "a malformed Content-Length")
                return
            if name.lower() == b"transfer-encoding" or int(value):
                self._refuse(413, "a body")
                return
        websocket = self._site.websocket
        assert websocket is not None
        if not _names_public_host(head, websocket.lobby.gate, self.transport):
            self._refuse(421, "a Host that is no --public-host")
            return
        # Autobahn's factory is Twisted's Factory with no type argument: its
        # buildProtocol is typed as returning any protocol, or None.  It
        # builds a WebSocketServerProtocol (RouletteFactory.protocol), always.
        inner = cast(WebSocketServerProtocol, websocket.buildProtocol(self._addr))
        self._inner = inner
        inner.makeConnection(self.transport)
        # The head alone first: Autobahn reads what follows it as frames, and
        # those go through the protocol's own reading, a slice at a time.
        inner.dataReceived(head)
        if rest and inner.state == _OPEN:
            inner.dataReceived(rest)
        self._opened(inner)

    def _refuse(self, code: int, why: str) -> None:
        self._done = True
        self._buffer = b""
        _write_refusal(self.transport, self._site.tally, code, why)
        self._site.metrics.refused_http(code)
        # The deadline still runs: a client that never reads this is dropped.
        assert self.transport is not None
        self.transport.loseConnection()

    def upgrade(self, request: IRequest, channel: DeadlineChannel) -> None:
        """Hand the connection from the site's ``channel`` to Autobahn, which
        reads ``request`` again, as it came."""
        websocket = self._site.websocket
        assert websocket is not None
        channel.setTimeout(None)  # type: ignore[no-untyped-call]  # unannotated in Twisted
        buffered = b"".join(channel._dataBuffer)
        channel._dataBuffer = []
        # As in _read_head: Autobahn's buildProtocol is typed loosely.
        inner = cast(WebSocketServerProtocol, websocket.buildProtocol(self._addr))
        channel._websocket = inner
        self._inner = inner
        inner.makeConnection(self.transport)
        # The channel stops reading while it serves a request.  ITransport
        # lacks resumeProducing; every connection served here has it.
        cast(IPushProducer, self.transport).resumeProducing()
        inner.dataReceived(_request_head(request))
        if buffered and inner.state == _OPEN:
            inner.dataReceived(buffered)
        self._opened(inner)

    def _opened(self, inner: WebSocketServerProtocol) -> None:
        """Once the WebSocket is open, its deadline is over and its bytes go
        straight to it.  One whose handshake failed is closing: the deadline
        still runs, and drops it if the client never reads the refusal."""
        if inner.state == _OPEN:
            self.deadline.disarm()
            self.dataReceived = inner.dataReceived  # type: ignore[method-assign]  # on purpose
        elif inner.state == _CONNECTING and isinstance(inner, RouletteProtocol):
            # The upgrade is answered later (a pool's Redis is asked first):
            # the deadline runs until then.
            inner.when_open = lambda: self._opened(inner)

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self.deadline.disarm()
        if self._counted:
            self._counted = False
            self._site.close_socket(self._key)
        if self._inner is not None:
            self._inner.connectionLost(reason)


def _names_public_host(head: bytes, gate: Gate, transport: Any) -> bool:
    """Whether an upgrade's ``head`` names one of the ``--public-host``
    names (always, when there are none), as :func:`_for_public_host` asks
    of a request the site reads."""
    if not gate.hosts:
        return True
    return _serves(
        gate,
        _HOST_HEADER.findall(head),
        _PROTO_HEADER.findall(head),
        ISSLTransport.providedBy(transport),
    )


def _request_head(request: IRequest) -> bytes:
    """A request's line and headers, as Autobahn reads a handshake."""
    lines = [request.method + b" " + request.uri + b" HTTP/1.1"]
    for name, values in request.requestHeaders.getAllRawHeaders():
        lines.extend(name + b": " + value for value in values)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def make_site(
    lobby: Lobby,
    web_root: Path,
    factory: RouletteFactory,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    response_timeout: float = RESPONSE_TIMEOUT,
    sockets: SocketLimits | None = None,
    rules: list[str] | None = None,
) -> RouletteSite:
    """One site: the page at ``/``, the WebSocket at ``/ws``, counts at
    ``/healthz``, why a WebSocket would be refused at ``/admission``, and
    the first-visit card's rules at ``/welcome`` (``rules``: ``None``, no
    card)."""
    root = StaticFiles(FilePath(str(web_root)).path)
    root.putChild(b"ws", WebSocketEntry())  # type: ignore[no-untyped-call]  # unannotated __init__
    root.putChild(b"healthz", Health(lobby))
    root.putChild(b"admission", Admission(lobby))
    root.putChild(b"welcome", Welcome(rules))
    return RouletteSite(
        root,
        handshake_timeout,
        websocket=factory,
        response_timeout=response_timeout,
        sockets=sockets,
    )

"""The private parts of Twisted and Autobahn that roulette relies on.

``roulette.transport``, ``roulette.website`` and ``roulette.server`` read a
few attributes that are not public API (see ``pyproject.toml`` for the
versions allowed).  If an upgrade drops one, these tests name it, rather
than leaving a chat to fail in some odd way.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest_twisted
from memory import Harness
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.web import http

from roulette.transport import direct_tcp


def missing(obj: Any, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if not hasattr(obj, name)]


@pytest_twisted.ensureDeferred
async def test_twisted_tcp_connections_have_what_direct_writes_read() -> None:
    accepted: defer.Deferred[Protocol] = defer.Deferred()

    class Accepted(Protocol):
        def connectionMade(self) -> None:
            accepted.callback(self)

    port = direct_tcp(reactor).listenTCP(0, Factory.forProtocol(Accepted), interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        transport = (await accepted).transport
        names = ("_tempDataLen", "offset", "dataBuffer", "_writeDisconnected", "_aborting", "TLS")
        assert not missing(transport, names), (
            f"Twisted's tcp.Connection lacks {missing(transport, names)}: "
            "roulette.transport.DirectServer.write and has_unsent read them"
        )
        transport.loseConnection()
    finally:
        client.close()
        await port.stopListening()


def test_twisted_http_channels_have_what_the_site_reads() -> None:
    channel = http.HTTPChannel()
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: example\r\n")
    names = ("_dataBuffer", "_command", "length", "_transferDecoder", "persistent")
    assert not missing(channel, names), (
        f"Twisted's HTTPChannel lacks {missing(channel, names)}: "
        "roulette.website.DeadlineChannel and FirstRequest.upgrade read them"
    )
    channel.connectionLost(None)


@pytest_twisted.ensureDeferred
async def test_autobahn_protocols_have_what_the_fast_paths_read(harness: Harness) -> None:
    client = await harness.connect()
    client.sendPing(b"x")  # a control frame read, and answered
    harness.pump()
    (server,) = harness.lobby._clients
    names = (
        "data",
        "current_frame",
        "inside_message",
        "logOctets",
        "control_frame_data",
        "autoPingPending",
        "autoPingTimeoutCall",
        "autoPingRestartOnAnyTraffic",
        "_cancelAutoPingTimeoutCall",
        "_closeConnection",
        "_dataReceived",
        "processControlFrame",
        "wasNotCleanReason",
    )
    assert not missing(server, names), (
        f"Autobahn's WebSocketServerProtocol lacks {missing(server, names)}: "
        "roulette.server.RouletteProtocol reads or overrides them"
    )

"""Direct writes on real sockets: sent at once while nothing is buffered,
and in order, complete, when the kernel's buffer fills."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from support import self_signed
from twisted.internet import defer, reactor, ssl, threads
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock

from roulette.transport import DirectPort, DirectServer, direct_tcp


class Accepted(Protocol):
    def connectionMade(self) -> None:
        self.factory.accepted.callback(self)  # type: ignore[attr-defined]


class Listener:
    def __init__(self) -> None:
        self.factory = Factory.forProtocol(Accepted)
        self.factory.accepted = defer.Deferred()  # type: ignore[attr-defined]
        self.port = direct_tcp(reactor).listenTCP(0, self.factory, interface="127.0.0.1")

    async def connect(self) -> tuple[socket.socket, Accepted]:
        client = socket.create_connection(("127.0.0.1", self.port.getHost().port))
        server = await self.factory.accepted
        return client, server


@pytest.fixture
def listener() -> Iterator[Listener]:
    made = Listener()
    yield made
    pytest_twisted.blockon(defer.maybeDeferred(made.port.stopListening))


def test_only_real_reactors_are_wrapped() -> None:
    memory = MemoryReactorClock()
    assert direct_tcp(memory) is memory


@pytest_twisted.ensureDeferred
async def test_a_write_is_on_the_wire_before_the_reactor_turns(listener: Listener) -> None:
    assert isinstance(listener.port, DirectPort)
    client, server = await listener.connect()
    try:
        assert isinstance(server.transport, DirectServer)
        server.transport.write(b"hello")
        # Still inside this callback: the reactor has not run since the write.
        client.settimeout(2)
        assert client.recv(100) == b"hello"
    finally:
        client.close()
        server.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_what_the_kernel_does_not_take_follows_in_order(listener: Listener) -> None:
    client, server = await listener.connect()
    chunks = [bytes([i]) * 65536 for i in range(160)]  # 10 MiB, far over socket buffers
    expected = b"".join(chunks)

    def read_all() -> bytes:
        received = bytearray()
        client.settimeout(30)
        while len(received) < len(expected):
            data = client.recv(1 << 20)
            if not data:
                break
            received += data
        return bytes(received)

    try:
        for chunk in chunks:
            server.transport.write(chunk)
        received = await threads.deferToThread(read_all)
        assert len(received) == len(expected)
        assert received == expected
    finally:
        client.close()
        server.transport.loseConnection()


async def received(client: socket.socket, seconds: float) -> bytes:
    """What the client reads until the server closes, or ``seconds`` of quiet."""
    client.settimeout(seconds)
    data = b""
    try:
        while chunk := await threads.deferToThread(client.recv, 100):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


@pytest_twisted.ensureDeferred
async def test_nothing_is_sent_after_an_abort(listener: Listener) -> None:
    client, server = await listener.connect()
    try:
        server.transport.abortConnection()
        server.transport.write(b"after the abort")
        assert await received(client, 2) == b""
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_nothing_goes_out_in_the_clear_after_starttls(
    listener: Listener, tmp_path: Path
) -> None:
    key, cert = self_signed(tmp_path)
    options = ssl.DefaultOpenSSLContextFactory(str(key), str(cert))
    client, server = await listener.connect()
    try:
        server.transport.startTLS(options)
        server.transport.write(b"a secret")
        assert b"a secret" not in await received(client, 0.5)
    finally:
        client.close()
        server.transport.abortConnection()

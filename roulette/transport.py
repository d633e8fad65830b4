"""TCP connections that send at once when nothing is waiting to be sent.

Twisted's TCP transport buffers every write, asks the reactor to watch the
socket for writability, sends on the next turn of the loop and stops
watching: two ``epoll_ctl`` calls, one more wake-up and a loop turn for each
relayed chat message.  :class:`DirectServer` tries ``send`` straight away
when its buffer is empty and buffers only what the kernel did not take, so
the order of bytes, the buffer limits and producers behave as before.

:class:`DirectTCPReactor` hands the endpoint parser a reactor whose
``listenTCP`` makes ports of such connections, so ``tcp:`` (and
``haproxy:tcp:``) endpoint strings get them, and ``ssl:`` ones (TLS over such
connections); every other endpoint type is the reactor's own.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.posixbase import PosixReactorBase
from twisted.protocols.tls import TLSMemoryBIOFactory


class DirectServer(tcp.Server):
    """A server-side TCP connection whose writes go straight to the socket
    while nothing is buffered."""

    def write(self, data: bytes) -> None:
        # Only where a stock write would send these bytes as they are: not
        # once the connection is aborted (a stock write sends nothing) nor
        # after startTLS (a stock write encrypts them).
        if (
            data
            and not self._tempDataLen
            and self.offset == len(self.dataBuffer)
            and self.connected
            and not self._writeDisconnected
            and not self._aborting
            and not self.TLS
            and isinstance(data, bytes)
        ):
            sent = self.writeSomeData(data)
            if sent == len(data):
                return
            if isinstance(sent, int) and sent > 0:
                data = data[sent:]
            # Otherwise the socket is full or the connection is lost; the
            # buffered write below finds out on the next turn, as usual.
        super().write(data)  # type: ignore[no-untyped-call]  # tcp.Server's write is unannotated


class DirectPort(tcp.Port):
    transport = DirectServer
    #: Bind with ``SO_REUSEPORT``: several processes listen on one port and
    #: the kernel spreads new connections over them.
    reuse_port = False

    def createInternetSocket(self) -> socket.socket:
        s: socket.socket = super().createInternetSocket()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        if self.reuse_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return s


class DirectTCPReactor:
    """A reactor that listens on TCP with :class:`DirectPort` and is the
    wrapped reactor in every other respect."""

    def __init__(self, reactor: Any, reuse_port: bool = False) -> None:
        self._reactor = reactor
        self._reuse_port = reuse_port

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenTCP(
        self, port: int, factory: IProtocolFactory, backlog: int = 50, interface: str = ""
    ) -> DirectPort:
        listening = DirectPort(port, factory, backlog, interface, self._reactor)
        listening.reuse_port = self._reuse_port
        listening.startListening()
        return listening

    def listenSSL(
        self,
        port: int,
        factory: IProtocolFactory,
        contextFactory: Any,
        backlog: int = 50,
        interface: str = "",
    ) -> Any:
        """The reactor's own; with ``reuse_port``, TLS over :meth:`listenTCP`,
        as the reactor's own ``listenSSL`` does over its own ``listenTCP``."""
        if not self._reuse_port:
            return self._reactor.listenSSL(port, factory, contextFactory, backlog, interface)
        tls_factory = TLSMemoryBIOFactory(contextFactory, False, factory)
        listening = self.listenTCP(port, tls_factory, backlog, interface)
        listening._type = "TLS"
        return listening


def direct_tcp(reactor: Any, reuse_port: bool = False) -> Any:
    """``reactor`` wrapped in a :class:`DirectTCPReactor` when its TCP ports
    are Twisted's own (any reactor built on file descriptors); otherwise, as
    for a test's memory reactor, ``reactor`` itself."""
    if isinstance(reactor, PosixReactorBase):
        return DirectTCPReactor(reactor, reuse_port)
    return reactor


def peer_host(transport: Any) -> str:
    """The address of ``transport``'s peer as a string: its host (for TCP,
    the client behind a PROXY-protocol header too), a UNIX socket's name, or
    whatever else the address says of itself."""
    peer = transport.getPeer() if transport is not None else None
    return str(getattr(peer, "host", None) or getattr(peer, "name", None) or peer)


def has_unsent(transport: Any) -> bool:
    """Whether ``transport`` may still hold bytes it has not sent.

    A closing TCP connection with nothing buffered is gone on the reactor's
    next turn; one that is not a Twisted TCP connection (TLS, say) may hold
    anything, so the answer for it is yes.
    """
    if not isinstance(transport, tcp.Connection):
        return True
    return bool(transport._tempDataLen) or transport.offset < len(transport.dataBuffer)

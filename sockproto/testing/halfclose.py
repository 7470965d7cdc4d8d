"""The half-close service in memory: a transport that can half-close, and a connected pair.

Twisted's ``StringTransport`` has no ``loseWriteConnection`` and the one of
``twisted.test.iosim`` does nothing, so neither can run a half-close exchange.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IHalfCloseableDescriptor,
    IHalfCloseableProtocol,
    IProtocol,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from ..halfclose.client import DEFAULT_MAX_ANSWER, HalfCloseClientProtocol
from ..halfclose.server import DEFAULT_MAX_REQUEST, DEFAULT_REQUEST_TIMEOUT, HalfCloseServerFactory
from ..handlers import Handler
from .memory import CLIENT_ADDRESS, SERVER_ADDRESS, MemoryConnection, connect_protocols

__all__ = ["HalfClosePair", "HalfCloseTransport", "halfclose_pair"]


@implementer(ITCPTransport, IHalfCloseableDescriptor)
class HalfCloseTransport(StringTransport):
    """A ``StringTransport`` that half-closes and aborts like a TCP transport.

    The test plays the peer: :meth:`peer_half_close` delivers the peer's end of file,
    :meth:`peer_reset` a reset, :meth:`lose` the end of the connection.  Bytes written
    after the write side is shut are kept apart in :attr:`late_writes` (a bug to assert
    against), not mixed with :meth:`value`.

    :ivar write_closed: ``loseWriteConnection`` was called.
    :ivar read_closed: the peer half-closed.
    :ivar aborted: ``abortConnection`` was called.
    :ivar lost: ``connectionLost`` was delivered.
    """

    def __init__(
        self,
        peer: IPv4Address | IPv6Address = CLIENT_ADDRESS,
        host: IPv4Address | IPv6Address = SERVER_ADDRESS,
    ) -> None:
        super().__init__(hostAddress=host, peerAddress=peer)  # type: ignore[no-untyped-call]
        self.protocol: IProtocol | None = None
        self.write_closed = False
        self.read_closed = False
        self.aborted = False
        self.lost = False
        self.late_writes = b""

    def connect(self, protocol: IProtocol) -> HalfCloseTransport:
        """Make the connection: ``protocol.makeConnection(self)``; return ``self``."""
        self.protocol = protocol
        protocol.makeConnection(self)
        return self

    # -- the transport, as the protocol sees it ----------------------------------------

    def write(self, data: bytes) -> None:
        if self.write_closed or self.disconnecting or self.lost:
            self.late_writes += data
            return
        super().write(data)  # type: ignore[no-untyped-call]

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseWriteConnection(self) -> None:
        """Shut down the write side; like Twisted, tell a half-closeable protocol."""
        if self.write_closed:
            return
        self.write_closed = True
        half = IHalfCloseableProtocol(self.protocol, None)
        if half is not None:
            half.writeConnectionLost()

    def loseConnection(self) -> None:
        """Close; with the write side already shut, the connection ends at once, as in Twisted."""
        super().loseConnection()  # type: ignore[no-untyped-call]
        if self.write_closed and not self.lost:
            self.lose(ConnectionDone())

    def abortConnection(self) -> None:
        """Reset; like Twisted, ``connectionLost`` comes later (:meth:`lose`), not in this call."""
        self.aborted = True
        self.disconnecting = self.disconnected = True

    def getTcpNoDelay(self) -> bool:
        return False

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def getTcpKeepAlive(self) -> bool:
        return False

    def setTcpKeepAlive(self, enabled: bool) -> None:
        pass

    # -- IHalfCloseableDescriptor: what the reactor calls ------------------------------

    def readConnectionLost(self, reason: Failure) -> None:
        """The reactor read an end of file: as :meth:`peer_half_close`."""
        self.peer_half_close()

    def writeConnectionLost(self, reason: Failure) -> None:
        """The reactor shut the write side down (already done by :meth:`loseWriteConnection`)."""

    # -- the peer and the reactor, played by the test ---------------------------------

    @property
    def closed_cleanly(self) -> bool:
        """``loseConnection`` was called and ``abortConnection`` was not (a FIN, not a reset)."""
        return bool(self.disconnecting) and not self.aborted

    def peer_half_close(self) -> None:
        """The peer shut down its write side: ``readConnectionLost``, or the end for other protocols."""
        self.read_closed = True
        half = IHalfCloseableProtocol(self.protocol, None)
        if half is not None:
            half.readConnectionLost()
        else:
            self.lose(ConnectionDone())

    def peer_reset(self) -> None:
        """The peer reset the connection."""
        self.lose(ConnectionLost("Connection reset by peer"))

    def lose(self, reason: Exception | None = None) -> None:
        """Deliver ``connectionLost``: with ``reason``, or what the transport's state implies."""
        if self.lost:
            return
        assert self.protocol is not None, "connect() a protocol first"
        if reason is None:
            reason = ConnectionAborted() if self.aborted else ConnectionDone()
        self.lost = True
        self.protocol.connectionLost(Failure(reason))


class HalfClosePair:
    """A half-close server factory and a way to send it requests through real protocols.

    Each :meth:`request` connects a new :class:`~sockproto.halfclose.client.HalfCloseClientProtocol`
    to a new server protocol in memory, sends, half-closes and pumps::

        pair = halfclose_pair(my_handler)
        self.assertEqual(self.successResultOf(pair.request(b"hi")), b"HI")

    :ivar factory: the server factory.
    :ivar clock: the server's clock (request timeouts).
    :ivar connections: every connection made, the last one last.
    """

    def __init__(
        self, factory: HalfCloseServerFactory, clock: IReactorTime, peer: IPv4Address | IPv6Address
    ) -> None:
        self.factory = factory
        self.clock = clock
        self.peer = peer
        self.connections: list[MemoryConnection] = []

    def request(self, payload: bytes, *, max_answer: int | None = DEFAULT_MAX_ANSWER) -> Deferred[bytes]:
        """Send ``payload`` on a new connection and pump; return the client's answer Deferred.

        It fails with :class:`~sockproto.halfclose.client.ServerReset` when the server
        resets (request too large, handler failure...).
        """
        server = self.factory.buildProtocol(self.peer)
        client = HalfCloseClientProtocol(payload, max_answer=max_answer)
        connection = connect_protocols(server, client, client_address=self.peer)
        self.connections.append(connection)
        connection.flush()
        return client.answer

    def flush(self) -> None:
        """Pump every connection (after an asynchronous handler's Deferred fired)."""
        for connection in self.connections:
            connection.flush()


def halfclose_pair(
    handler: Handler | HalfCloseServerFactory,
    *,
    max_request: int = DEFAULT_MAX_REQUEST,
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    clock: IReactorTime | None = None,
    peer: IPv4Address | IPv6Address = CLIENT_ADDRESS,
) -> HalfClosePair:
    """Return a :class:`HalfClosePair` serving ``handler``.

    :param handler: a handler, or a ready :class:`~sockproto.halfclose.server.HalfCloseServerFactory`
        (``max_request``, ``request_timeout`` and ``clock`` are then ignored; a factory
        without a clock is given a :class:`~twisted.internet.task.Clock`).
    :param clock: the server's clock for request timeouts (a new
        :class:`~twisted.internet.task.Clock` by default: no real timer is ever set).
    :param peer: the client's address, as the handler sees it in ``request.peer``.
    """
    if isinstance(handler, HalfCloseServerFactory):
        factory = handler
        if factory.clock is None:
            factory.clock = Clock()  # a test must not leave timers in the global reactor
        clock = factory.clock
    else:
        clock = clock if clock is not None else Clock()
        factory = HalfCloseServerFactory(
            handler, max_request=max_request, request_timeout=request_timeout, clock=clock
        )
    return HalfClosePair(factory, clock, peer)

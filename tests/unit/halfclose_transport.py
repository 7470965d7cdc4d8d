"""An in-memory TCP transport that can half-close, for the half-close unit tests.

Twisted's ``StringTransport`` has no ``loseWriteConnection`` and ``iosim``'s is a
no-op; this one records the calls and lets the test play the peer and the reactor.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IProtocol, ITCPTransport
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


@implementer(ITCPTransport)
class HalfCloseTransport(StringTransport):
    """A ``StringTransport`` with the half-close and abort of a TCP connection.

    :ivar write_closed: ``loseWriteConnection`` was called.
    :ivar read_closed: the peer half-closed (:meth:`peer_half_close`).
    :ivar aborted: ``abortConnection`` was called.
    :ivar late_writes: bytes written after the write side was closed (a bug).
    """

    def __init__(self, peer: IAddress = PEER) -> None:
        super().__init__(peerAddress=peer)
        self.protocol: IProtocol | None = None
        self.write_closed = False
        self.read_closed = False
        self.aborted = False
        self.lost = False
        self.late_writes = b""

    def connect(self, protocol: IProtocol) -> HalfCloseTransport:
        """Make the connection: ``protocol.makeConnection(self)``."""
        self.protocol = protocol
        protocol.makeConnection(self)
        return self

    # -- the transport, as the protocol sees it ----------------------------------------

    def write(self, data: bytes) -> None:
        if self.write_closed or self.disconnecting or self.lost:
            self.late_writes += data
            return
        super().write(data)

    def loseWriteConnection(self) -> None:
        """Shut down the write side; like Twisted, tell a half-closeable protocol."""
        self.write_closed = True
        proto = IHalfCloseableProtocol(self.protocol, None)
        if proto is not None:
            proto.writeConnectionLost()

    def loseConnection(self) -> None:
        """Like Twisted: with the write side already shut down, the connection is lost at once."""
        super().loseConnection()
        if self.write_closed and not self.lost:
            self.lose(ConnectionDone())

    def abortConnection(self) -> None:
        """Like Twisted: the connection is lost later (:meth:`lose`), not during this call."""
        self.aborted = True
        self.disconnecting = self.disconnected = True

    # -- the peer and the reactor, played by the test ---------------------------------

    @property
    def closed_cleanly(self) -> bool:
        """``loseConnection`` was called and ``abortConnection`` was not."""
        return bool(self.disconnecting) and not self.aborted

    def peer_half_close(self) -> None:
        """The peer shut down its write side: deliver the end of file as Twisted does."""
        assert self.protocol is not None
        self.read_closed = True
        proto = IHalfCloseableProtocol(self.protocol, None)
        if proto is not None:
            proto.readConnectionLost()
        else:
            self.lose(ConnectionDone())

    def lose(self, reason: Exception | None = None) -> None:
        """Finish: ``connectionLost`` with ``reason``, or the one the transport's state implies."""
        assert self.protocol is not None
        if reason is None:
            reason = ConnectionAborted() if self.aborted else ConnectionDone()
        self.lost = True
        self.protocol.connectionLost(Failure(reason))

    def peer_reset(self) -> None:
        """The peer reset the connection."""
        self.lose(ConnectionLost("Connection reset by peer"))

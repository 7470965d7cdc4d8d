"""An in-memory stream connection between two protocols, moved along by a pump.

Unlike ``twisted.test.iosim`` (whose transports ignore ``pauseProducing`` and whose
``loseWriteConnection`` does nothing) this connection behaves like a TCP connection in
the ways sockproto's protocols depend on:

- a transport whose reading is paused (``transport.pauseProducing()``) is not given
  data: the bytes wait in its peer's write buffer;
- a streaming producer registered with a transport is paused when more than
  ``write_buffer`` bytes wait to be delivered and resumed when they are, so a peer
  that stops reading pushes back, as the kernel's socket buffers do;
- ``loseWriteConnection`` is a real half-close: once the written bytes are delivered,
  the peer reads an end of file (``readConnectionLost`` for an
  :class:`~twisted.internet.interfaces.IHalfCloseableProtocol`, else the connection
  closes) and the writer gets ``writeConnectionLost``;
- ``loseConnection`` closes once the written bytes are delivered; ``abortConnection``
  discards them and the peer sees a reset
  (:class:`~twisted.internet.error.ConnectionLost`).

Nothing happens until the test calls :meth:`MemoryConnection.pump` or
:meth:`~MemoryConnection.flush`, so every step can be looked at.
"""

from __future__ import annotations

from typing import Any, Final

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableDescriptor,
    IHalfCloseableProtocol,
    IProtocol,
    IPushProducer,
    ITCPTransport,
)
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "CLIENT_ADDRESS",
    "DEFAULT_WRITE_BUFFER",
    "SERVER_ADDRESS",
    "MemoryConnection",
    "MemoryTransport",
    "connect_protocols",
]

DEFAULT_WRITE_BUFFER: Final = 65536
"""Bytes a transport buffers before pausing its streaming producer (Twisted's default)."""

CLIENT_ADDRESS: Final[IPv4Address | IPv6Address] = IPv4Address("TCP", "127.0.0.1", 40000)
SERVER_ADDRESS: Final[IPv4Address | IPv6Address] = IPv4Address("TCP", "127.0.0.1", 8750)


@implementer(ITCPTransport, IHalfCloseableDescriptor, IConsumer, IPushProducer)
class MemoryTransport:
    """One end of a :class:`MemoryConnection`: what a protocol sees as its transport.

    :ivar protocol: the protocol this transport delivers to.
    :ivar reading: whether the protocol accepts data (``pauseProducing`` clears it).
    :ivar write_closed: ``loseWriteConnection`` was called.
    :ivar read_closed: the peer's end of file was delivered.
    :ivar disconnecting: ``loseConnection`` (or ``abortConnection``) was called.
    :ivar aborted: ``abortConnection`` was called.
    :ivar disconnected: ``connectionLost`` was delivered.
    :ivar producer: the registered producer, if any.
    :ivar producer_paused: whether this transport paused its streaming producer.
    :ivar received: every byte delivered to the protocol, for assertions.
    """

    def __init__(
        self,
        protocol: IProtocol,
        host: IPv4Address | IPv6Address,
        peer: IPv4Address | IPv6Address,
        write_buffer: int = DEFAULT_WRITE_BUFFER,
    ) -> None:
        self.protocol = protocol
        self.host = host
        self.peer = peer
        self.write_buffer = write_buffer
        self.reading = True
        self.write_closed = False
        self.read_closed = False
        self.disconnecting = False
        self.aborted = False
        self.disconnected = False
        self.producer: Any = None
        self.streaming = False
        self.producer_paused = False
        self.received = bytearray()
        self.no_delay = False
        self.keep_alive = False
        self._outgoing: list[bytes] = []
        self._outgoing_size = 0

    def __repr__(self) -> str:
        return f"<MemoryTransport {self.host} -> {self.peer} of {type(self.protocol).__name__}>"

    @property
    def buffered(self) -> int:
        """Bytes written and not delivered to the peer yet."""
        return self._outgoing_size

    # -- ITransport -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Buffer ``data`` for the peer; dropped, as Twisted does, once the write side is shut."""
        if not isinstance(data, bytes):
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        if self.write_closed or self.disconnecting or self.disconnected or not data:
            return
        self._outgoing.append(data)
        self._outgoing_size += len(data)
        if (
            self.streaming
            and self.producer is not None
            and not self.producer_paused
            and self._outgoing_size > self.write_buffer
        ):
            self.producer_paused = True
            self.producer.pauseProducing()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Close once the buffered bytes are delivered."""
        self.disconnecting = True

    def abortConnection(self) -> None:
        """Close now, discarding the buffered bytes: the peer sees a reset."""
        self.disconnecting = self.aborted = True
        self._outgoing, self._outgoing_size = [], 0

    def loseWriteConnection(self) -> None:
        """Half-close: the peer reads an end of file once the buffered bytes are delivered."""
        self.write_closed = True

    # -- IHalfCloseableDescriptor: the connection delivers half-closes, not the reactor --

    def readConnectionLost(self, reason: Failure) -> None:
        """Not called: :class:`MemoryConnection` delivers the peer's end of file itself."""

    def writeConnectionLost(self, reason: Failure) -> None:
        """Not called: :meth:`loseWriteConnection` shuts the write side at once."""

    def getPeer(self) -> IPv4Address | IPv6Address:
        return self.peer

    def getHost(self) -> IPv4Address | IPv6Address:
        return self.host

    # -- ITCPTransport's socket options: recorded only -----------------------------------

    def getTcpNoDelay(self) -> bool:
        return self.no_delay

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = bool(enabled)

    def getTcpKeepAlive(self) -> bool:
        return self.keep_alive

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.keep_alive = bool(enabled)

    # -- IConsumer --------------------------------------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError("a producer is registered already")
        self.producer = producer
        self.streaming = bool(streaming)
        self.producer_paused = False

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = False
        self.producer_paused = False

    # -- IPushProducer: the protocol pauses and resumes reading ------------------------

    def pauseProducing(self) -> None:
        self.reading = False

    def resumeProducing(self) -> None:
        self.reading = True

    def stopProducing(self) -> None:
        self.loseConnection()

    # -- used by the connection ---------------------------------------------------------

    def _take(self) -> bytes:
        data = b"".join(self._outgoing)
        self._outgoing, self._outgoing_size = [], 0
        return data

    def _unshift(self, data: bytes) -> None:
        """Put back bytes the peer could not take yet, ahead of anything written since."""
        self._outgoing.insert(0, data)
        self._outgoing_size += len(data)

    def _drained(self) -> None:
        """The peer took everything: resume a producer paused for a full buffer."""
        if self.producer_paused and self.producer is not None:
            self.producer_paused = False
            self.producer.resumeProducing()

    def _lose(self, reason: Exception) -> None:
        """Deliver ``connectionLost``, stopping a registered producer first, as Twisted does."""
        if self.disconnected:
            return
        self.disconnected = self.disconnecting = True
        self._outgoing, self._outgoing_size = [], 0
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.stopProducing()
        self.protocol.connectionLost(Failure(reason))


class MemoryConnection:
    """Two protocols connected in memory; :meth:`pump` moves bytes and closes between them.

    :param server: the accepting side's protocol (``connectionMade`` is called first).
    :param client: the connecting side's protocol.
    :param server_address: the server's address (the client's ``getPeer()``).
    :param client_address: the client's address (the server's ``getPeer()``).
    :param write_buffer: bytes each transport buffers before pausing its producer.
    :param chunk_size: deliver at most this many bytes per ``dataReceived`` (1 feeds
        byte by byte); ``None`` delivers everything buffered in one call.
    """

    def __init__(
        self,
        server: IProtocol,
        client: IProtocol,
        *,
        server_address: IPv4Address | IPv6Address = SERVER_ADDRESS,
        client_address: IPv4Address | IPv6Address = CLIENT_ADDRESS,
        write_buffer: int = DEFAULT_WRITE_BUFFER,
        chunk_size: int | None = None,
    ) -> None:
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, not {chunk_size}")
        self.server_transport = MemoryTransport(server, server_address, client_address, write_buffer)
        self.client_transport = MemoryTransport(client, client_address, server_address, write_buffer)
        self.chunk_size = chunk_size

    @property
    def server(self) -> IProtocol:
        """The accepting side's protocol."""
        return self.server_transport.protocol

    @property
    def client(self) -> IProtocol:
        """The connecting side's protocol."""
        return self.client_transport.protocol

    @property
    def closed(self) -> bool:
        """Whether both sides got ``connectionLost``."""
        return self.server_transport.disconnected and self.client_transport.disconnected

    def connect(self) -> MemoryConnection:
        """Call ``makeConnection`` on the server, then the client; return ``self``."""
        self.server.makeConnection(self.server_transport)
        self.client.makeConnection(self.client_transport)
        return self

    def pump(self) -> bool:
        """Do one round of deliveries in both directions; say whether anything happened."""
        moved = self._move(self.client_transport, self.server_transport)
        moved = self._move(self.server_transport, self.client_transport) or moved
        return moved

    def flush(self, max_rounds: int = 10_000) -> None:
        """Pump until nothing moves: bytes wait only where their reader paused reading.

        :raises RuntimeError: if the protocols are still talking after ``max_rounds``.
        """
        for _ in range(max_rounds):
            if not self.pump():
                return
        raise RuntimeError(f"the connection is still busy after {max_rounds} rounds")

    def _move(self, writer: MemoryTransport, reader: MemoryTransport) -> bool:
        """Deliver what ``writer`` buffered to ``reader``, then its close or half-close."""
        if writer.disconnected:
            if not reader.disconnected and not reader.read_closed:
                self._end_of_file(reader)  # the writer closed its socket: a FIN
                return True
            return False
        if writer.aborted:
            writer._lose(ConnectionAborted())
            reader._lose(ConnectionLost("Connection reset by peer"))
            return True
        moved = False
        if writer.buffered:
            if reader.disconnected:
                writer._take()  # the peer is gone: the bytes go nowhere
            elif not reader.reading:
                return False
            else:
                data = writer._take()
                step = self.chunk_size or len(data)
                for start in range(0, len(data), step):
                    if reader.aborted:
                        break  # the reader reset the connection: Twisted delivers no more
                    if not reader.reading or reader.disconnected:
                        if not reader.disconnected:
                            writer._unshift(data[start:])  # paused: the rest waits
                        break
                    chunk = data[start : start + step]
                    reader.received += chunk
                    reader.protocol.dataReceived(chunk)
            moved = True
            if writer.buffered:
                return moved  # not all taken, or written meanwhile: the next round goes on
            writer._drained()
        if writer.buffered:
            return moved
        if writer.disconnecting:
            writer._lose(ConnectionDone())
            self._end_of_file(reader)
            return True
        if writer.write_closed and not reader.read_closed and not reader.disconnected:
            half = IHalfCloseableProtocol(writer.protocol, None)
            if half is not None:
                half.writeConnectionLost()
            self._end_of_file(reader)
            return True
        return moved

    def _end_of_file(self, reader: MemoryTransport) -> None:
        """The peer's FIN: ``readConnectionLost`` if ``reader`` half-closes, else close it."""
        if reader.disconnected or reader.read_closed:
            return
        reader.read_closed = True
        half = IHalfCloseableProtocol(reader.protocol, None)
        if half is not None:
            half.readConnectionLost()
        else:
            reader._lose(ConnectionDone())


def connect_protocols(
    server: IProtocol,
    client: IProtocol,
    *,
    server_address: IPv4Address | IPv6Address = SERVER_ADDRESS,
    client_address: IPv4Address | IPv6Address = CLIENT_ADDRESS,
    write_buffer: int = DEFAULT_WRITE_BUFFER,
    chunk_size: int | None = None,
) -> MemoryConnection:
    """Connect ``server`` and ``client`` in memory and return the connection (not pumped yet)."""
    return MemoryConnection(
        server,
        client,
        server_address=server_address,
        client_address=client_address,
        write_buffer=write_buffer,
        chunk_size=chunk_size,
    ).connect()

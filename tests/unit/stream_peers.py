"""In-memory peers for the stream servers' limit, drain and metrics tests."""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from sockproto.core import SPF1, HeaderSpec, Kind
from sockproto.testing.frames import AnswerFrame, parse_frames
from sockproto.testing.memory import MemoryConnection, connect_protocols


class Peer(Protocol):
    """A client that only records what it receives and how the connection ended."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason


class Wire:
    """A server protocol from ``factory`` and a :class:`Peer`, connected in memory."""

    def __init__(self, factory: Any, header: HeaderSpec = SPF1) -> None:
        self.factory = factory
        self.header = header
        self.server: Any = factory.buildProtocol(None)
        self.peer = Peer()
        self.connection: MemoryConnection = connect_protocols(self.server, self.peer)
        self.connection.flush()

    def send(self, data: bytes) -> None:
        """Write ``data`` from the client and deliver everything."""
        self.connection.client_transport.write(data)
        self.connection.flush()

    def half_close(self) -> None:
        """The client shuts down its write side."""
        self.connection.client_transport.loseWriteConnection()
        self.connection.flush()

    def frames(self) -> list[AnswerFrame]:
        """Every frame the client received so far."""
        return parse_frames(bytes(self.peer.data), header=self.header)

    @property
    def closed(self) -> bool:
        return self.connection.server_transport.disconnected

    @property
    def reset(self) -> bool:
        return self.connection.server_transport.aborted


def request(payload: bytes, ident: int = 1, kind: int = Kind.REQUEST) -> bytes:
    return SPF1.encode(payload, kind=int(kind), id=ident)

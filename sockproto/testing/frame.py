"""The frame service in memory: a real server and client connected without sockets."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock

from ..core.decoder import DEFAULT_MAX_PAYLOAD
from ..core.header import SPF1, HeaderSpec
from ..frame.client import FrameClientProtocol
from ..frame.server import DEFAULT_MAX_IN_FLIGHT, FrameServerFactory, FrameServerProtocol
from ..handlers import Handler
from .frames import AnswerFrame, parse_frames
from .memory import CLIENT_ADDRESS, DEFAULT_WRITE_BUFFER, SERVER_ADDRESS, MemoryConnection, connect_protocols

__all__ = ["FramePair", "frame_exchange", "frame_pair"]


class FramePair:
    """A :class:`~sockproto.frame.server.FrameServerProtocol` and a
    :class:`~sockproto.frame.client.FrameClientProtocol` connected in memory.

    Requests go through the real protocols, header encoding, decoder, flow control
    and all.  :meth:`request` and :meth:`ping` pump the connection before returning,
    so a synchronous handler's answer is already there::

        pair = frame_pair(my_handler)
        self.assertEqual(self.successResultOf(pair.request(b"hi")), b"HI")

    An asynchronous handler's answer arrives when its Deferred fires; call
    :meth:`flush` then (or advance :attr:`clock` for timers).

    :ivar server: the server protocol.
    :ivar client: the client protocol.
    :ivar connection: the :class:`~sockproto.testing.memory.MemoryConnection`.
    :ivar clock: the client's clock, for request timeouts.
    """

    def __init__(
        self,
        server: FrameServerProtocol,
        client: FrameClientProtocol,
        connection: MemoryConnection,
        clock: IReactorTime,
    ) -> None:
        self.server = server
        self.client = client
        self.connection = connection
        self.clock = clock

    def request(self, payload: bytes, *, timeout: float | None = None) -> Deferred[bytes]:
        """Send a REQUEST and pump; the Deferred is the client's (see ``FrameClientProtocol.request``)."""
        d = self.client.request(payload, timeout=timeout)
        self.flush()
        return d

    def ping(self, payload: bytes = b"", *, timeout: float | None = None) -> Deferred[bytes]:
        """Send a PING and pump; the Deferred fires with the PONG's payload."""
        d = self.client.ping(payload, timeout=timeout)
        self.flush()
        return d

    def flush(self) -> None:
        """Deliver everything that can be delivered, both ways."""
        self.connection.flush()

    def close(self) -> Deferred[None]:
        """Close from the client side and pump; the Deferred fires once it is closed."""
        d = self.client.close()
        self.flush()
        return d


def _factory(
    handler: Handler | FrameServerFactory, header: HeaderSpec, max_payload: int | None, max_in_flight: int
) -> FrameServerFactory:
    if isinstance(handler, FrameServerFactory):
        return handler
    return FrameServerFactory(handler, header=header, max_payload=max_payload, max_in_flight=max_in_flight)


def frame_pair(
    handler: Handler | FrameServerFactory,
    *,
    header: HeaderSpec = SPF1,
    max_payload: int | None = DEFAULT_MAX_PAYLOAD,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    clock: IReactorTime | None = None,
    peer: IPv4Address | IPv6Address = CLIENT_ADDRESS,
    host: IPv4Address | IPv6Address = SERVER_ADDRESS,
    write_buffer: int = DEFAULT_WRITE_BUFFER,
    chunk_size: int | None = None,
) -> FramePair:
    """Connect a frame server serving ``handler`` to a client, in memory.

    :param handler: a handler, or a ready :class:`~sockproto.frame.server.FrameServerFactory`
        (then ``header``, ``max_payload`` and ``max_in_flight`` configure only the client
        and are otherwise ignored).
    :param header: the wire header, for both sides.
    :param max_payload: the server's (``None`` for a streaming handler: what the header
        can say; see :func:`~sockproto.serving.streaming.streaming`); the client takes
        answers up to the header's limit then.
    :param clock: the client's clock for timeouts (a new
        :class:`~twisted.internet.task.Clock` by default: no real timer is ever set).
    :param peer: the client's address, as the handler sees it in ``request.peer``.
    :param host: the server's address.
    :param write_buffer: bytes each side buffers before pausing its producer.
    :param chunk_size: split every delivery into reads of at most this many bytes.
    """
    factory = _factory(handler, header, max_payload, max_in_flight)
    server = cast(FrameServerProtocol, factory.buildProtocol(peer))  # a refusal if over the limit
    clock = clock if clock is not None else Clock()
    client = FrameClientProtocol(factory.header, clock=clock)
    connection = connect_protocols(
        server,
        client,
        server_address=host,
        client_address=peer,
        write_buffer=write_buffer,
        chunk_size=chunk_size,
    )
    pair = FramePair(server, client, connection, clock)
    pair.flush()
    return pair


class _Collector(Protocol):
    """A peer that only collects what it receives."""

    def __init__(self) -> None:
        self.data = bytearray()

    def dataReceived(self, data: bytes) -> None:
        self.data += data


def frame_exchange(
    handler: Handler | FrameServerFactory,
    data: bytes,
    *,
    header: HeaderSpec = SPF1,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    chunk_size: int | None = None,
    peer: IPv4Address | IPv6Address = CLIENT_ADDRESS,
) -> list[AnswerFrame]:
    """Send raw bytes to a frame server in memory; return the frames it answered with.

    For what a well-behaved client never sends: a wrong kind, an oversized length, a
    bad magic.  Only synchronous answers (and Deferreds already fired) are collected.

    :param data: the bytes sent, for instance :func:`~sockproto.testing.frames.build_frame`
        results joined.
    """
    factory = _factory(handler, header, max_payload, DEFAULT_MAX_IN_FLIGHT)
    server = factory.buildProtocol(peer)
    collector = _Collector()
    connection = connect_protocols(server, collector, client_address=peer, chunk_size=chunk_size)
    transport: Any = connection.client_transport
    transport.write(data)
    connection.flush()
    return parse_frames(bytes(collector.data), header=factory.header)

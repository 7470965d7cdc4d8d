"""The datagram service without sockets: a fake UDP port that records what is sent, and where.

``MemoryReactor`` has no UDP, and ``twisted.internet.testing.FakeDatagramTransport``
implements ``write`` only.  :class:`FakeDatagramTransport` is a whole
:class:`~twisted.internet.interfaces.IUDPTransport`, connected or not, that also lets the
test play the network: deliver a datagram from an address, or an ICMP refusal.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import MessageLengthError
from twisted.internet.interfaces import IReactorTime, IUDPTransport
from twisted.internet.protocol import AbstractDatagramProtocol
from twisted.internet.task import Clock
from zope.interface import implementer

from ..core.datagram import MAX_UDP_PAYLOAD
from ..datagram.server import DatagramServerFactory, Mode
from ..handlers import Handler

__all__ = ["Address", "FakeDatagramTransport", "serve_datagrams"]

Address = tuple[str, int]
"""A UDP address as Twisted's datagram protocols see it: ``(host, port)``."""


@implementer(IUDPTransport)
class FakeDatagramTransport:
    """A UDP port in memory.

    :param host: the port's own address (``getHost``).
    :param max_datagram: ``write`` raises :class:`~twisted.internet.error.MessageLengthError`
        for a bigger datagram, as a real socket does (EMSGSIZE).

    :ivar written: every ``(datagram, address)`` sent, oldest first; the address is the
        connected one for a connected port.
    :ivar connected_to: the address given to :meth:`connect`, or ``None``.
    :ivar protocol: the protocol :meth:`attach` started.
    :ivar listening: ``False`` once :meth:`stopListening` was called.
    :ivar reading: ``False`` after :meth:`stopReading` (a draining server): datagrams
        delivered then are not given to the protocol, and counted in :attr:`unread`.
    :ivar fail_with: if set, ``write`` raises it (a full socket buffer: ``OSError(ENOBUFS)``...).
    """

    def __init__(
        self, host: IPv4Address | IPv6Address | None = None, *, max_datagram: int = MAX_UDP_PAYLOAD
    ) -> None:
        self.host = host if host is not None else IPv4Address("UDP", "127.0.0.1", 8751)
        self.max_datagram = max_datagram
        self.written: list[tuple[bytes, Address]] = []
        self.connected_to: Address | None = None
        self.protocol: AbstractDatagramProtocol | None = None
        self.listening = True
        self.reading = True
        self.unread = 0
        self.broadcast = False
        self.fail_with: BaseException | None = None

    def attach(self, protocol: AbstractDatagramProtocol) -> FakeDatagramTransport:
        """Start ``protocol`` on this port (``makeConnection``: ``startProtocol`` runs); return ``self``."""
        self.protocol = protocol
        protocol.makeConnection(self)
        return self

    # -- IUDPTransport ------------------------------------------------------------------

    def write(self, packet: bytes, addr: Address | None = None) -> None:
        """Record ``packet`` sent to ``addr`` (to the connected address if ``None``)."""
        if not isinstance(packet, bytes):
            raise TypeError(f"write() takes bytes, not {type(packet).__name__}")
        if self.connected_to is not None:
            if addr is not None and tuple(addr) != self.connected_to:
                raise ValueError(f"this port is connected to {self.connected_to}, not {addr}")
            addr = self.connected_to
        if addr is None:
            raise ValueError("write() needs an address on a port that is not connected")
        if len(packet) > self.max_datagram:
            raise MessageLengthError(f"a {len(packet)}-byte datagram is over {self.max_datagram} bytes")
        if self.fail_with is not None:
            raise self.fail_with
        self.written.append((packet, (addr[0], addr[1])))

    def connect(self, host: str, port: int) -> None:
        """Connect: later writes go to ``(host, port)``."""
        self.connected_to = (host, port)

    def getHost(self) -> IPv4Address | IPv6Address:
        return self.host

    def stopListening(self) -> Deferred[None]:
        """Stop the protocol (``stopProtocol`` runs), as closing a real port does."""
        if self.listening:
            self.listening = False
            if self.protocol is not None:
                self.protocol.doStop()
        return succeed(None)

    def stopReading(self) -> None:
        """Stop reading datagrams (they wait in the kernel's buffer, and are lost at close)."""
        self.reading = False

    def startReading(self) -> None:
        """Read datagrams again."""
        self.reading = True

    def setBroadcastAllowed(self, enabled: bool) -> None:
        self.broadcast = bool(enabled)

    def getBroadcastAllowed(self) -> bool:
        return self.broadcast

    # -- the network, played by the test ----------------------------------------------

    def receive(self, datagram: bytes, addr: Address = ("127.0.0.1", 40000)) -> list[tuple[bytes, Address]]:
        """Deliver ``datagram`` from ``addr``; return what was sent during the call.

        A synchronous handler's reply is in the list; an asynchronous one is appended
        to :attr:`written` when its Deferred fires.
        """
        assert self.protocol is not None, "attach() a protocol first"
        start = len(self.written)
        if not self.reading:
            self.unread += 1
            return []
        self.protocol.datagramReceived(datagram, addr)
        return self.written[start:]

    def refuse(self) -> None:
        """An ICMP "port unreachable" came back (a connected port's ``connectionRefused``)."""
        protocol: Any = self.protocol
        protocol.connectionRefused()

    def datagrams(self) -> list[bytes]:
        """The datagrams written, without their addresses."""
        return [packet for packet, _ in self.written]

    def clear(self) -> None:
        """Forget what was written so far."""
        self.written.clear()


def serve_datagrams(
    handler: Handler | DatagramServerFactory,
    *,
    mode: Mode = "spf1",
    max_datagram: int = MAX_UDP_PAYLOAD,
    clock: IReactorTime | None = None,
    host: IPv4Address | IPv6Address | None = None,
) -> FakeDatagramTransport:
    """Start a datagram server for ``handler`` on a :class:`FakeDatagramTransport`; return the port.

    The server protocol is ``port.protocol``; its counters are ``port.protocol.stats``::

        port = serve_datagrams(my_handler)
        [(reply, addr)] = port.receive(build_request(b"hi", id=7), ("127.0.0.1", 5353))

    :param handler: a handler, or a ready :class:`~sockproto.datagram.server.DatagramServerFactory`
        (``mode``, ``max_datagram`` and ``clock`` are then ignored).
    :param clock: ages the reply cache (a new :class:`~twisted.internet.task.Clock` by
        default: no real timer is involved).
    """
    if isinstance(handler, DatagramServerFactory):
        factory = handler
    else:
        factory = DatagramServerFactory(
            handler, mode=mode, max_datagram=max_datagram, clock=clock if clock is not None else Clock()
        )
    return FakeDatagramTransport(host).attach(factory.buildProtocol(None))

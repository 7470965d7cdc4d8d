"""In-memory doubles for the datagram tests: a UDP transport recording what is written."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.protocol import DatagramProtocol


class FakeUDPTransport:
    """Records ``(datagram, address)`` per write; may be told to fail writes.

    :ivar written: every write, in order (address ``None`` when connected).
    :ivar fail_with: an exception raised by the next writes, if set.
    :ivar connected_to: the ``(host, port)`` given to :meth:`connect`.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8751) -> None:
        self.written: list[tuple[bytes, Any]] = []
        self.fail_with: BaseException | None = None
        self.connected_to: tuple[str, int] | None = None
        self.protocol: DatagramProtocol | None = None
        self.stopped = False
        self._host = IPv4Address("UDP", host, port)

    def attach(self, protocol: DatagramProtocol) -> FakeUDPTransport:
        """Start ``protocol`` on this transport, as a listening port does."""
        self.protocol = protocol
        protocol.makeConnection(self)  # type: ignore[arg-type]
        return self

    def write(self, datagram: bytes, addr: Any = None) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        assert type(datagram) is bytes, type(datagram)
        self.written.append((datagram, addr))

    def connect(self, host: str, port: int) -> None:
        self.connected_to = (host, port)

    def getHost(self) -> IPv4Address:
        return self._host

    def stopListening(self) -> Any:
        self.stopped = True
        if self.protocol is not None:
            self.protocol.doStop()
        return succeed(None)

    def datagrams(self) -> list[bytes]:
        """Only the datagrams written."""
        return [datagram for datagram, _ in self.written]

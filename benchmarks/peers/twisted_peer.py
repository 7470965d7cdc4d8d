"""Plain Twisted: what a Twisted user writes with Twisted's own classes, nothing else.

``Int32StringReceiver`` for frames, a ``DatagramProtocol`` for UDP, an
``IHalfCloseableProtocol`` that answers on ``readConnectionLost``, and a bare
``Protocol`` (the memory baseline of the idle-connection workload).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SERVICES = ("frame", "udp", "halfclose", "bare")


def serve(
    services: tuple[str, ...], handler: str, max_payload: int, ready: Callable[[dict[str, int]], None]
) -> None:
    from twisted.internet import reactor
    from twisted.internet.defer import gatherResults, succeed
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
    from twisted.protocols.basic import Int32StringReceiver
    from zope.interface import implementer

    from benchmarks.peers.handlers import HANDLERS
    from benchmarks.peers.serve import BACKLOG

    answer = HANDLERS[handler]

    class FrameEcho(Int32StringReceiver):
        MAX_LENGTH = max_payload

        def stringReceived(self, string: bytes) -> None:
            self.sendString(answer(string))

    class UDPEcho(DatagramProtocol):
        def datagramReceived(self, datagram: bytes, addr: Any) -> None:
            self.transport.write(answer(datagram), addr)

    @implementer(IHalfCloseableProtocol)
    class HalfCloseEcho(Protocol):
        def connectionMade(self) -> None:
            self.chunks: list[bytes] = []

        def dataReceived(self, data: bytes) -> None:
            self.chunks.append(data)

        def readConnectionLost(self) -> None:
            self.transport.write(answer(b"".join(self.chunks)))
            self.transport.loseConnection()

        def writeConnectionLost(self) -> None:
            pass

    listening: dict[str, Any] = {}
    tcp = TCP4ServerEndpoint(reactor, 0, backlog=BACKLOG, interface="127.0.0.1")
    for name, protocol in (("frame", FrameEcho), ("halfclose", HalfCloseEcho), ("bare", Protocol)):
        if name in services:
            factory = Factory.forProtocol(protocol)
            factory.noisy = False
            listening[name] = tcp.listen(factory)
    if "udp" in services:
        listening["udp"] = succeed(reactor.listenUDP(0, UDPEcho(), interface="127.0.0.1"))
    names = list(listening)

    def started(ports: list[Any]) -> None:
        ready({name: port.getHost().port for name, port in zip(names, ports, strict=True)})

    gatherResults([listening[n] for n in names]).addCallback(started)
    reactor.run()

"""sockproto: its three services, configured for the suite's wire formats.

The frame service speaks the ``INT32`` preset (``Int32StringReceiver``'s format), the
datagram service its raw mode (one bare datagram each way) and the half-close service
its only format.  Handlers are sockproto's own ``echo`` and ``sha256``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SERVICES = ("frame", "udp", "halfclose")


def serve(
    services: tuple[str, ...], handler: str, max_payload: int, ready: Callable[[dict[str, int]], None]
) -> None:
    from twisted.internet import reactor
    from twisted.internet.defer import gatherResults
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from benchmarks.peers.serve import BACKLOG
    from sockproto import INT32, FrameServerFactory, HalfCloseServerFactory
    from sockproto.datagram import DatagramServerFactory, UDPServerEndpoint
    from sockproto.handlers import BUILTINS

    answer = BUILTINS[handler]
    # Quiet factories, as for the plain Twisted peer: no per-connection log events.
    frame = FrameServerFactory(answer, header=INT32, max_payload=max_payload)
    halfclose = HalfCloseServerFactory(answer, max_request=max_payload)
    frame.noisy = halfclose.noisy = False
    listening: dict[str, Any] = {}
    tcp = TCP4ServerEndpoint(reactor, 0, backlog=BACKLOG, interface="127.0.0.1")
    if "frame" in services:
        listening["frame"] = tcp.listen(frame)
    if "halfclose" in services:
        listening["halfclose"] = tcp.listen(halfclose)
    if "udp" in services:
        listening["udp"] = UDPServerEndpoint(reactor, 0, "127.0.0.1").listen(
            DatagramServerFactory(answer, mode="raw")
        )
    names = list(listening)

    def started(ports: list[Any]) -> None:
        ready({name: port.getHost().port for name, port in zip(names, ports, strict=True)})

    gatherResults([listening[n] for n in names]).addCallback(started)
    reactor.run()

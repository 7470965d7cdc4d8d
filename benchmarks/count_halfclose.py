"""Instructions per half-close connection, sockproto vs a bare Twisted echo, under callgrind.

Wall-clock benchmarks of a connection's server-side cost are noisy on a shared machine;
instruction counts are not.  This runs, in memory (no socket, no reactor loop), what a
TCP port and connection do for one half-close request: ``factory.buildProtocol(addr)``,
``makeConnection(transport)``, one ``dataReceived`` of 100 bytes, ``readConnectionLost``
(the answer is written, the connection closed) and ``connectionLost``; for
sockproto's :class:`~sockproto.halfclose.server.HalfCloseServerFactory` as the suite
configures it (``echo``, quiet) and for the ``BareEcho`` protocol of
``bench_halfclose.py``.  Each is counted under ``valgrind --tool=callgrind`` twice, for
``--small`` and ``--large`` connections, and the difference divided by the extra
connections gives the instructions per connection with the start-up taken out.  The
transport is the same minimal object for both, so the difference between the two is
what sockproto adds.

``--loopback`` counts the whole server process instead, reactor and Twisted's TCP
transport included (user space only: the kernel's share is not counted): the server
runs under callgrind on the default reactor, listening on 127.0.0.1, and a client
process (not under callgrind) makes ``--small`` then ``--large`` requests to a fresh
server, a new connection each, one at a time (``--concurrency``: the reactor's work per
request then depends on how many events each of its passes finds, and the counts vary
by some percent from run to run); each server stops when its standard input
closes.  This is what the suite's half-close workload runs, slowed down some fifty
times, so it is counted once and not timed.

Usage: ``python benchmarks/count_halfclose.py [--loopback] [--small N] [--large N] [--size BYTES]``
(needs ``valgrind``; about a minute in memory, two over loopback).  ``--child KIND N``
is the loop valgrind runs, ``--serve KIND`` the loopback server.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KINDS = ("bare", "sockproto")
WARMUP = 200  # connections before the counted loop: caches, the sweep's timer, the first-time checks


def _transport_class() -> type:
    """The minimal transport both protocols get: a TCP transport that can half-close."""
    from twisted.internet.interfaces import IHalfCloseableDescriptor, ITCPTransport
    from zope.interface import implementer

    @implementer(ITCPTransport, IHalfCloseableDescriptor)
    class Transport:
        def __init__(self, peer: Any) -> None:
            self.peer = peer
            self.written: list[bytes] = []
            self.closing = False

        def getPeer(self) -> Any:
            return self.peer

        def write(self, data: bytes) -> None:
            self.written.append(data)

        def loseConnection(self) -> None:
            self.closing = True

        def abortConnection(self) -> None:
            self.closing = True

    return Transport


def _bare_echo_factory() -> Any:
    """``bench_halfclose.py``'s ``BareEcho``: what a Twisted user writes for half-close echo."""
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from twisted.internet.protocol import Factory, Protocol
    from zope.interface import implementer

    @implementer(IHalfCloseableProtocol)
    class BareEcho(Protocol):
        def connectionMade(self) -> None:
            self.chunks: list[bytes] = []

        def dataReceived(self, data: bytes) -> None:
            self.chunks.append(data)

        def readConnectionLost(self) -> None:
            self.transport.write(b"".join(self.chunks))  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]

        def writeConnectionLost(self) -> None:
            pass

    factory = Factory.forProtocol(BareEcho)
    factory.noisy = False
    return factory


def child(kind: str, connections: int, size: int) -> None:
    """Serve ``WARMUP + connections`` half-close requests in memory with ``kind``'s protocol."""
    from twisted.internet import reactor  # noqa: F401  (the clock of sockproto's timers, never run)
    from twisted.internet.address import IPv4Address
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    if kind == "bare":
        factory: Any = _bare_echo_factory()
    else:
        from sockproto import HalfCloseServerFactory
        from sockproto.handlers import echo

        factory = HalfCloseServerFactory(echo, max_request=2**30)  # as benchmarks/peers/sockproto_peer.py
        factory.noisy = False
    factory.doStart()  # as a listening port does
    transport_class = _transport_class()
    payload = b"x" * size
    done = Failure(ConnectionDone())
    addr = IPv4Address("TCP", "127.0.0.1", 40000)

    def serve(n: int) -> None:
        for _ in range(n):
            protocol = factory.buildProtocol(addr)
            transport = transport_class(addr)
            protocol.makeConnection(transport)
            protocol.dataReceived(payload)
            protocol.readConnectionLost()
            assert transport.closing and transport.written == [payload]
            protocol.connectionLost(done)

    serve(WARMUP)
    serve(connections)


def serve(kind: str) -> None:
    """Serve half-close echo with ``kind``'s protocol on 127.0.0.1 until stdin closes."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.protocol import Protocol
    from twisted.internet.stdio import StandardIO

    if kind == "bare":
        factory: Any = _bare_echo_factory()
    else:
        from sockproto import HalfCloseServerFactory
        from sockproto.handlers import echo

        factory = HalfCloseServerFactory(echo, max_request=2**30)  # as benchmarks/peers/sockproto_peer.py
        factory.noisy = False

    class StopOnEOF(Protocol):
        def connectionLost(self, reason: Any = None) -> None:
            reactor.stop()  # type: ignore[attr-defined]

    def listening(port: Any) -> None:
        print(port.getHost().port, flush=True)

    TCP4ServerEndpoint(reactor, 0, backlog=1024, interface="127.0.0.1").listen(factory).addCallback(listening)
    StandardIO(StopOnEOF())
    reactor.run()  # type: ignore[attr-defined]


def requests(port: int, n: int, size: int, concurrency: int = 1) -> None:
    """Make ``n`` half-close echo requests to ``port``, ``concurrency`` at a time; check each answer."""
    import selectors
    import socket

    payload = b"x" * size
    sel = selectors.DefaultSelector()
    started = done = 0
    answers: dict[socket.socket, list[bytes]] = {}

    def start() -> None:
        nonlocal started
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        s.setblocking(False)
        answers[s] = []
        sel.register(s, selectors.EVENT_READ)
        started += 1

    for _ in range(min(concurrency, n)):
        start()
    while done < n:
        for key, _ in sel.select(60):
            s: Any = key.fileobj
            data = s.recv(65536)
            if data:
                answers[s].append(data)
                continue
            if b"".join(answers.pop(s)) != payload:
                raise RuntimeError("wrong answer")
            sel.unregister(s)
            s.close()
            done += 1
            if started < n:
                start()


def _callgrind(argv: list[str], out: Path, **popen: Any) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONHASHSEED="0")  # the same dict layouts in every run
    return subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__, *argv],
        env=env,
        stderr=subprocess.DEVNULL,
        **popen,
    )


def _total(out: Path) -> int:
    match = re.search(r"^(?:summary|totals):\s*(\d+)", out.read_text(errors="replace"), re.M)
    if match is None:
        raise RuntimeError(f"no instruction total in {out}")
    return int(match.group(1))


def count(kind: str, connections: int, size: int, loopback: bool = False, concurrency: int = 1) -> int:
    """Instructions callgrind counts for a run of ``connections`` connections."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        if not loopback:
            child = _callgrind(
                ["--child", kind, str(connections), "--size", str(size)], out, stdout=subprocess.DEVNULL
            )
            if child.wait(timeout=900):
                raise RuntimeError(f"the {kind} child failed")
            return _total(out)
        server = _callgrind(["--serve", kind], out, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert server.stdin is not None and server.stdout is not None
        try:
            line = server.stdout.readline()
            if not line:
                raise RuntimeError(f"the {kind} server did not start")
            requests(int(line), connections, size, concurrency)
        finally:
            server.stdin.close()
            if server.wait(timeout=300):
                raise RuntimeError(f"the {kind} server failed")
        return _total(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000, help="connections of the first run")
    parser.add_argument("--large", type=int, default=3000, help="connections of the second run")
    parser.add_argument("--size", type=int, default=100, help="request size in bytes")
    parser.add_argument("--only", choices=KINDS, default=None, help="count one protocol only")
    parser.add_argument("--loopback", action="store_true", help="count a whole server over 127.0.0.1")
    parser.add_argument("--concurrency", type=int, default=1, help="loopback: requests at a time")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.size)
        return
    if args.serve:
        serve(args.serve)
        return
    if not 0 < args.small < args.large <= 100_000 or not 0 < args.concurrency <= 64:
        parser.error("need 0 < --small < --large <= 100000 and 0 < --concurrency <= 64")
    per: dict[str, float] = {}
    for kind in (args.only,) if args.only else KINDS:
        small = count(kind, args.small, args.size, args.loopback, args.concurrency)
        large = count(kind, args.large, args.size, args.loopback, args.concurrency)
        per[kind] = (large - small) / (args.large - args.small)
        print(f"{kind:<10} {per[kind]:>10,.0f} instructions per connection", flush=True)
    if len(per) == 2:
        print(f"sockproto / bare: {per['sockproto'] / per['bare']:.2f}x")


if __name__ == "__main__":
    main()

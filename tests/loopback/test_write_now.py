"""sockproto.writing.write_now over real sockets: sent at once, partial sends buffered in order."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, UNIXServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread

from sockproto.writing import write_now

BIG = 8 * 2**20  # far more than a loopback socket buffer takes at once


def pattern(size: int, seed: int) -> bytes:
    block = bytes((seed + i) % 251 for i in range(251))
    return (block * (size // 251 + 1))[:size]


class Writer(Protocol):
    """Writes a small chunk, a big one, then a small one with write_now on connecting."""

    def __init__(self, seen: Deferred[list[tuple[int, int]]]) -> None:
        self.seen = seen

    def connectionMade(self) -> None:
        t: Any = self.transport
        states = []
        for data in (pattern(100, 1), pattern(BIG, 2), pattern(100, 3)):
            write_now(t, data)
            states.append((t._tempDataLen, len(t.dataBuffer) - t.offset))
        self.transport.loseConnection()
        self.seen.callback(states)


def read_all(connect: Any) -> bytes:
    sock = connect()
    sock.settimeout(30)
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    sock.close()
    return b"".join(chunks)


async def check(endpoint: Any, connect: Any) -> None:
    seen: Deferred[list[tuple[int, int]]] = Deferred()
    port = await endpoint.listen(Factory.forProtocol(lambda: Writer(seen)))
    try:
        received = deferToThread(read_all, lambda: connect(port))
        states = await seen
        data = await received
    finally:
        await port.stopListening()
    # The first chunk went to the socket at once: Twisted holds nothing of it.
    assert states[0] == (0, 0)
    # The big one did not fit: Twisted holds its rest, and the last chunk goes behind it.
    assert states[1][0] > 0
    assert states[2][0] == states[1][0] + 100
    assert data == pattern(100, 1) + pattern(BIG, 2) + pattern(100, 3)


@pytest_twisted.ensureDeferred
async def test_tcp() -> None:
    def connect(port: Any) -> socket.socket:
        return socket.create_connection(("127.0.0.1", port.getHost().port))

    await check(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), connect)


@pytest_twisted.ensureDeferred
async def test_unix(tmp_path: Path) -> None:
    path = str(tmp_path / "w.sock")

    def connect(port: Any) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        return sock

    await check(UNIXServerEndpoint(reactor, path), connect)


def test_other_transports_get_write() -> None:
    """A transport that is not the reactor's own socket just gets ``write``."""
    transport = StringTransport()
    write_now(transport, b"abc")
    write_now(transport, b"def")
    assert transport.value() == b"abcdef"

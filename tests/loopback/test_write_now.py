"""sockproto.serving.writing.write_now over real sockets: sent at once, partial sends buffered in order."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, UNIXServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread

from sockproto.serving.writing import write_now

BIG = 8 * 2**20  # far more than a loopback socket buffer takes at once


def pattern(size: int, seed: int) -> bytes:
    block = bytes((seed + i) % 251 for i in range(251))
    return (block * (size // 251 + 1))[:size]


CHUNK = 100 * 1024  # under SEND_LIMIT: sent at once while the socket takes it
CHUNKS = 200  # 20 MB: far more than the socket buffers hold, so the kernel says no


def chunks() -> list[bytes]:
    return [pattern(100, 1), pattern(BIG, 2), pattern(100, 3)] + [pattern(CHUNK, i) for i in range(CHUNKS)]


class Writer(Protocol):
    """Writes every chunk with write_now on connecting, noting what Twisted holds after each."""

    def __init__(self, seen: Deferred[list[int]]) -> None:
        self.seen = seen

    def connectionMade(self) -> None:
        t: Any = self.transport
        held = []
        for data in chunks():
            write_now(t, data)
            held.append(t._tempDataLen + len(t.dataBuffer) - t.offset)
        self.transport.loseConnection()
        self.seen.callback(held)


def read_all(connect: Any, written: threading.Event | None = None) -> bytes:
    sock = connect()
    sock.settimeout(30)
    if written is not None:  # read nothing until the writer is done: the buffers fill
        assert written.wait(30)
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    sock.close()
    return b"".join(chunks)


async def check(endpoint: Any, connect: Any) -> None:
    seen: Deferred[list[int]] = Deferred()
    port = await endpoint.listen(Factory.forProtocol(lambda: Writer(seen)))
    try:
        received = deferToThread(read_all, lambda: connect(port))
        held = await seen
        data = await received
    finally:
        await port.stopListening()
    assert data == b"".join(chunks())  # every byte, in order, whichever path it took
    # The first chunk went to the socket at once: Twisted holds nothing of it.
    assert held[0] == 0
    # A large one goes to Twisted's buffer whole (its rest would have to be copied),
    # and the next chunk waits behind it.
    assert held[1:3] == [BIG, BIG + 100]


async def check_partial(endpoint: Any, connect: Any) -> None:
    """Small writes go straight out until the kernel takes only part of one."""
    seen: Deferred[list[int]] = Deferred()
    written = threading.Event()

    class Small(Writer):
        def connectionMade(self) -> None:
            t: Any = self.transport
            held = []
            for i in range(CHUNKS):
                write_now(t, pattern(CHUNK, i))
                held.append(t._tempDataLen)
            written.set()
            self.transport.loseConnection()
            self.seen.callback(held)

    port = await endpoint.listen(Factory.forProtocol(lambda: Small(seen)))
    try:
        received = deferToThread(read_all, lambda: connect(port), written)
        held = await seen
        data = await received
    finally:
        await port.stopListening()
    assert data == b"".join(pattern(CHUNK, i) for i in range(CHUNKS))
    first = next(i for i, n in enumerate(held) if n)
    assert first > 0  # some went out whole, at once
    assert 0 < held[first] <= CHUNK  # the rest of the first one the kernel cut short
    assert held[-1] >= held[first]


@pytest_twisted.ensureDeferred
async def test_tcp() -> None:
    def connect(port: Any) -> socket.socket:
        return socket.create_connection(("127.0.0.1", port.getHost().port))

    await check(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), connect)
    await check_partial(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), connect)


@pytest_twisted.ensureDeferred
async def test_unix(tmp_path: Path) -> None:
    path = str(tmp_path / "w.sock")

    def connect_to(where: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(where)
        return sock

    def connect(port: Any) -> socket.socket:
        return connect_to(path)

    await check(UNIXServerEndpoint(reactor, path), connect)
    await check_partial(UNIXServerEndpoint(reactor, path + "2"), lambda port: connect_to(path + "2"))


def test_other_transports_get_write() -> None:
    """A transport that is not the reactor's own socket just gets ``write``."""
    transport = StringTransport()
    write_now(transport, b"abc")
    write_now(transport, b"def")
    assert transport.value() == b"abcdef"

"""Issue 8 over real loopback sockets: limits, timeouts, threads, UDP abuse, in-process drain."""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from sockproto import FrameServerFactory, HalfCloseServerFactory, RemoteError, ServerReset, connect_frame
from sockproto.core import ErrorCode, decode_error
from sockproto.core.datagram import DropReason, parse_datagram
from sockproto.datagram import DatagramServerFactory, UDPServerEndpoint, connect_datagram
from sockproto.halfclose import halfclose_request
from sockproto.handlers import echo
from sockproto.request import Request
from sockproto.serving.service import ServerService
from sockproto.serving.threads import ThreadedHandler

from ..helpers import listen

pytestmark = pytest.mark.timeout(60)


class Collect(Protocol):
    """Send ``first`` on connecting; collect everything until the connection closes."""

    def __init__(self, first: bytes = b"") -> None:
        self.first = first
        self.data = b""
        self.reason: Failure | None = None
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if self.first:
            assert self.transport is not None
            self.transport.write(self.first)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason
        self.done.callback(None)


async def collect(port: Any, first: bytes = b"") -> Collect:
    proto = Collect(first)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), proto)
    await proto.done.addTimeout(10, reactor)
    return proto


def spf1(payload: bytes, ident: int = 1, kind: int = 1) -> bytes:
    return struct.pack(">2sBBII", b"SP", 1, kind, ident, len(payload)) + payload


def tcp(port: Any) -> str:
    return f"tcp:host=127.0.0.1:port={port.getHost().port}"


@pytest_twisted.ensureDeferred
async def test_frame_max_connections_error_5_even_with_a_request_on_its_way() -> None:
    factory = FrameServerFactory(echo, max_connections=1)
    port = await listen(factory)
    try:
        client = await connect_frame(tcp(port))
        refused = await collect(port, spf1(b"x" * 50000))  # unread bytes must not turn into a reset
        assert refused.data[:4] == b"SP\x01\x03"
        code, message = decode_error(refused.data[12:])
        assert code == ErrorCode.OVERLOADED and "too many connections" in message
        assert await client.request(b"unaffected", timeout=5) == b"unaffected"
        assert factory.metrics.connections_refused == 1
        await client.close()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_halfclose_max_connections_resets() -> None:
    factory = HalfCloseServerFactory(lambda r: deferLater(reactor, 0.5, lambda: r.payload))
    factory.tracker.max_connections = 1
    port = await listen(factory)
    try:
        first = halfclose_request(tcp(port), b"first", timeout=10)
        await deferLater(reactor, 0.1, lambda: None)
        with pytest.raises(ServerReset):
            await halfclose_request(tcp(port), b"second", timeout=10)
        assert await first == b"first"
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_frame_idle_timeout_and_handler_timeout() -> None:
    never: Deferred[bytes] = Deferred()
    factory = FrameServerFactory(lambda r: never, idle_timeout=0.3, handler_timeout=0.2)
    port = await listen(factory)
    try:
        client = await connect_frame(tcp(port))
        with pytest.raises(RemoteError) as info:
            await client.request(b"slow", timeout=5)
        assert info.value.code == ErrorCode.TIMEOUT
        idle = await collect(port)  # sends nothing: closed by the server after 0.3 s
        assert idle.data == b""
        await client.close()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_blocking_handlers_in_threads_do_not_stall_the_reactor() -> None:
    release = threading.Event()
    entered = threading.Semaphore(0)

    def blocking(request: Request) -> bytes:
        entered.release()
        release.wait(20)
        return request.payload.upper()

    threads = ThreadedHandler(blocking, 2)
    factory = FrameServerFactory(threads)
    endpoints: list[tuple[str, Any]] = [("tcp", serverFromString(reactor, "tcp:0:interface=127.0.0.1"))]
    service = ServerService("frame", factory, endpoints, threads=threads)
    service.startService()
    try:
        port = service.listeners[0].port
        client = await connect_frame(tcp(port))
        answers = gatherResults([client.request(b"a", timeout=20), client.request(b"b", timeout=20)])
        inside = 0
        while inside < 2:  # both handlers are blocked in their threads
            if entered.acquire(blocking=False):
                inside += 1
            else:
                await deferLater(reactor, 0.01, lambda: None)
        assert await client.ping(b"alive", timeout=5) == b"alive"  # both threads are blocked
        assert not answers.called
        release.set()
        assert sorted(await answers) == [b"A", b"B"]
        await client.close()
    finally:
        release.set()
        await service.stopService()
    assert not threads.running


@pytest_twisted.ensureDeferred
async def test_in_process_drain_answers_every_request_in_flight() -> None:
    factory = FrameServerFactory(lambda r: deferLater(reactor, 0.3, lambda: r.payload))
    service = ServerService(
        "frame", factory, [("tcp", serverFromString(reactor, "tcp:0:interface=127.0.0.1"))], drain_timeout=10
    )
    service.startService()
    port = service.listeners[0].port
    client = await connect_frame(tcp(port))
    answers = [client.request(b"%d" % i, timeout=10) for i in range(5)]
    await deferLater(reactor, 0.1, lambda: None)  # received, handlers running
    stopped = service.stopService()
    with pytest.raises(ConnectionRefusedError):
        await connect_frame(tcp(port))
    assert await gatherResults(answers) == [b"%d" % i for i in range(5)]
    await stopped
    assert factory.metrics.connections_open == 0


@pytest_twisted.ensureDeferred
async def test_udp_amplification_guard_and_cookie() -> None:
    factory = DatagramServerFactory(lambda r: r.payload * 100, trusted=())
    port = await UDPServerEndpoint(reactor, 0, "127.0.0.1").listen(factory)
    try:
        number = port.getHost().port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:  # a bare sender: gets a small ERROR
            raw.setblocking(False)
            raw.sendto(spf1(b"abc", 9), ("127.0.0.1", number))
            for _ in range(500):
                await deferLater(reactor, 0.01, lambda: None)
                try:
                    reply = raw.recv(65536)
                    break
                except BlockingIOError:
                    continue
            else:
                raise AssertionError("no reply")
        frame = parse_datagram(reply, {3})
        assert len(reply) <= 3 * len(spf1(b"abc", 9))
        assert decode_error(frame.payload)[1].startswith("cookie=")  # type: ignore[union-attr]
        client = await connect_datagram(f"udp:host=127.0.0.1:port={number}")
        assert await client.request(b"abc", timeout=5) == b"abc" * 100  # the client returns the cookie
        await client.close()
        assert factory.stats.guarded >= 2
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_udp_rate_limit_drops_a_flood_from_one_source() -> None:
    # trusted=(): loopback is trusted by default, and trusted sources are not rate-limited
    factory = DatagramServerFactory(echo, mode="raw", rate_limit=5, trusted=())
    port = await UDPServerEndpoint(reactor, 0, "127.0.0.1").listen(factory)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.setblocking(False)
            for _ in range(50):
                raw.sendto(b"flood", ("127.0.0.1", port.getHost().port))
            for _ in range(200):
                await deferLater(reactor, 0.01, lambda: None)
                if factory.stats.received == 50:
                    break
            replies = 0
            while True:
                try:
                    raw.recv(100)
                    replies += 1
                except BlockingIOError:
                    break
        assert factory.stats.received == 50
        assert factory.stats.drops[DropReason.RATE_LIMITED] >= 40
        assert replies == factory.stats.answers <= 10
    finally:
        await port.stopListening()

"""The frame service over real loopback sockets: every stream endpoint, real peers, flow control."""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import deferLater
from twisted.protocols.basic import Int32StringReceiver

from sockproto import INT32, SPF1, FrameServerFactory, RemoteError, connect_frame
from sockproto.core import ErrorCode
from sockproto.frame.server import FrameServerProtocol
from sockproto.handlers import echo, sha256
from sockproto.request import Request

from ..helpers import listen
from .tls import make_certificate


class TrackingFactory(FrameServerFactory):
    """Keeps the protocols it builds, so tests can look at server-side state."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.built: list[FrameServerProtocol] = []

    def buildProtocol(self, addr: Any) -> FrameServerProtocol:
        proto = super().buildProtocol(addr)
        self.built.append(proto)
        return proto


async def until(predicate: Any, timeout: float = 10.0) -> None:
    """Wait (reactor running) until ``predicate()`` is true."""
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("condition not reached in time")


def peer_echo(request: Request) -> bytes:
    assert isinstance(request.peer, IPv4Address) or request.peer is not None
    return (
        f"{type(request.peer).__name__} {getattr(request.peer, 'host', '')}".encode() + b"|" + request.payload
    )


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("family", ["tcp", "tcp6", "unix"])
async def test_request_ping_error_over_each_stream_family(family: str, tmp_path: Path) -> None:
    if family == "tcp":
        server, client = "tcp:0:interface=127.0.0.1", "tcp:host=127.0.0.1:port={port}"
    elif family == "tcp6":
        server, client = r"tcp6:0:interface=\:\:1", r"tcp:host=\:\:1:port={port}"
    else:
        server, client = f"unix:{tmp_path}/frame.sock", f"unix:path={tmp_path}/frame.sock"

    def handler(request: Request) -> bytes:
        if request.payload == b"fail":
            raise ValueError("as asked")
        return sha256(request)

    port = await listen(FrameServerFactory(handler), server)
    try:
        c = await connect_frame(client.format(port=getattr(port.getHost(), "port", 0)))
        answers = await gatherResults([c.request(b"abc"), c.ping(b"p"), c.request(b"")])
        assert answers[0] == b"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n"
        assert answers[1] == b"p"
        with pytest.raises(RemoteError) as info:
            await c.request(b"fail")
        assert info.value.code == ErrorCode.HANDLER_FAILED
        assert await c.request(b"still here") != b""
        await c.close()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_tls(tmp_path: Path) -> None:
    pem, cert = make_certificate(tmp_path)
    port = await listen(FrameServerFactory(echo), f"ssl:0:interface=127.0.0.1:privateKey={pem}")
    try:
        options = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(cert))
        endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port))
        c = await connect_frame(endpoint)
        payload = bytes(range(256)) * 4096  # 1 MiB through TLS
        assert await c.request(payload) == payload
        assert await c.ping() == b""
        await c.close()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_dual_stack_peer_is_plain_ipv4() -> None:
    port = await listen(FrameServerFactory(peer_echo), r"tcp6:0:interface=\:\:")
    try:
        c = await connect_frame(f"tcp:host=127.0.0.1:port={port.getHost().port}")
        assert await c.request(b"x") == b"IPv4Address 127.0.0.1|x"
        await c.close()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_twisted_int32stringreceiver_client_against_int32_server() -> None:
    got: Deferred[list[bytes]] = Deferred()

    class TwistedClient(Int32StringReceiver):
        def connectionMade(self) -> None:
            self.answers: list[bytes] = []
            for payload in (b"one", b"", b"three" * 1000):
                self.sendString(payload)

        def stringReceived(self, string: bytes) -> None:
            self.answers.append(string)
            if len(self.answers) == 3:
                got.callback(self.answers)
                self.transport.loseConnection()

    port = await listen(FrameServerFactory(echo, header=INT32))
    try:
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), TwistedClient())
        assert await got == [b"one", b"", b"three" * 1000]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_our_int32_client_against_twisted_int32stringreceiver_server() -> None:
    class TwistedEcho(Int32StringReceiver):
        MAX_LENGTH = 2**24

        def stringReceived(self, string: bytes) -> None:
            self.sendString(string[::-1])

    port = await listen(Factory.forProtocol(TwistedEcho))
    try:
        c = await connect_frame(f"tcp:host=127.0.0.1:port={port.getHost().port}", header=INT32)
        answers = await gatherResults([c.request(b"abc"), c.request(b"xyz" * 100_000)])
        assert answers == [b"cba", (b"xyz" * 100_000)[::-1]]
        await c.close()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_raw_socket_wire_format() -> None:
    """A client written from the spec alone, with the talk's sendall and a read loop."""
    port = await listen(FrameServerFactory(echo))

    def talk() -> list[tuple[int, int, bytes]]:
        with socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10) as s:
            s.sendall(struct.pack(">2sBBII", b"SP", 1, 1, 42, 5) + b"hello")
            s.sendall(struct.pack(">2sBBII", b"SP", 1, 4, 43, 0))
            data = b""
            while len(data) < 12 + 5 + 12:
                chunk = s.recv(4096)
                assert chunk
                data += chunk
        out = []
        while data:
            magic, version, kind, ident, length = struct.unpack(">2sBBII", data[:12])
            assert (magic, version) == (b"SP", 1)
            out.append((kind, ident, data[12 : 12 + length]))
            data = data[12 + length :]
        return out

    try:
        from twisted.internet.threads import deferToThread

        assert await deferToThread(talk) == [(2, 42, b"hello"), (5, 43, b"")]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_large_frame_echo() -> None:
    port = await listen(FrameServerFactory(echo, max_payload=64 * 2**20))
    try:
        c = await connect_frame(f"tcp:host=127.0.0.1:port={port.getHost().port}", max_payload=64 * 2**20)
        payload = b"\x5a" * (32 * 2**20)
        assert await c.request(payload) == payload
        await c.close()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_oversized_request_refused_and_connection_goes_on() -> None:
    port = await listen(FrameServerFactory(echo, max_payload=1000))
    try:
        c = await connect_frame(f"tcp:host=127.0.0.1:port={port.getHost().port}")
        with pytest.raises(RemoteError) as info:
            await c.request(b"x" * 5000)
        assert info.value.code == ErrorCode.TOO_LARGE
        assert await c.request(b"small") == b"small"
        await c.close()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_max_in_flight_over_a_real_socket() -> None:
    release: Deferred[None] = Deferred()
    started: list[int] = []

    async def handler(request: Request) -> bytes:
        started.append(request.id or 0)
        await release
        return request.payload

    factory = TrackingFactory(handler, max_in_flight=4)
    port = await listen(factory)
    try:
        c = await connect_frame(f"tcp:host=127.0.0.1:port={port.getHost().port}")
        answers = gatherResults([c.request(b"%d" % i) for i in range(40)])
        await until(lambda: len(started) == 4)
        await deferLater(reactor, 0.1, lambda: None)
        assert len(started) == 4  # the others are not read, let alone handled
        release.callback(None)
        assert await answers == [b"%d" % i for i in range(40)]
        await c.close()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_peer_that_does_not_read_is_not_read_and_others_are_served() -> None:
    factory = TrackingFactory(lambda r: r.payload * 64)  # answers 64x the request
    port = await listen(factory)
    try:
        # A client that writes requests as fast as it can and never reads.
        hog = socket.create_connection(("127.0.0.1", port.getHost().port))
        hog.setblocking(False)
        request = SPF1.encode(b"x" * 1024, kind=1, id=1)
        sent = 0
        stalled = 0
        while stalled < 30 and sent < 512 * 2**20:
            try:
                sent += hog.send(request * 64)
                stalled = 0
            except BlockingIOError:
                stalled += 1
                await deferLater(reactor, 0.02, lambda: None)
        conn = lambda: factory.built and factory.built[0]._conn  # noqa: E731
        await until(lambda: conn() and not conn().reading)
        server = factory.built[0]
        transport: Any = server.transport
        buffered = len(transport.dataBuffer) + transport._tempDataLen
        assert buffered < 32 * 2**20, buffered  # bounded, not the gigabytes asked for
        assert sent < 256 * 2**20  # the kernel buffers filled: the server stopped reading
        # Meanwhile another client is served at once.
        c = await connect_frame(f"tcp:host=127.0.0.1:port={port.getHost().port}")
        assert await c.request(b"y") == b"y" * 64
        await c.close()
        hog.close()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_many_clients_many_requests() -> None:
    async def handler(request: Request) -> bytes:
        await deferLater(reactor, 0.001 * (request.payload[0] % 5), lambda: None)
        return request.payload

    port = await listen(FrameServerFactory(handler))
    try:
        clients = await gatherResults(
            [connect_frame(f"tcp:host=127.0.0.1:port={port.getHost().port}") for _ in range(50)]
        )
        payloads = [[bytes([c, r]) * 10 for r in range(20)] for c in range(50)]
        answers = await gatherResults(
            [gatherResults([cl.request(p) for p in ps]) for cl, ps in zip(clients, payloads, strict=True)]
        )
        assert answers == payloads
        await gatherResults([cl.close() for cl in clients])
    finally:
        await port.stopListening()

"""The datagram service over real UDP sockets: 127.0.0.1, ::1 and dual-stack ::."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import DeferredQueue, TimeoutError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from sockproto.core.datagram import MAX_UDP_PAYLOAD, DropReason, encode_datagram
from sockproto.core.header import PayloadTooLarge
from sockproto.core.spf1 import ErrorCode, Kind
from sockproto.datagram import (
    DatagramClientProtocol,
    DatagramServerFactory,
    PortUnreachable,
    RemoteError,
    connect_datagram,
    endpoints,
    udp_server_from_string,
)
from sockproto.handlers import echo, sha256
from sockproto.request import Request

from ..helpers import free_port, require_tool

V6 = r"\:\:1"
ANY6 = r"\:\:"


class Peer(DatagramProtocol):
    """A bare UDP socket for the tests: sends anything, queues what it receives."""

    def __init__(self) -> None:
        self.queue: DeferredQueue[tuple[bytes, Any]] = DeferredQueue()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.queue.put((datagram, addr))

    async def receive(self, timeout: float = 5.0) -> bytes:
        got = self.queue.get()
        got.addTimeout(timeout, reactor)
        datagram, _ = await got
        return datagram

    async def nothing_within(self, seconds: float) -> None:
        try:
            datagram = await self.receive(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected datagram {datagram!r}")


def record_peers(handler: Any = echo) -> tuple[list[Request], Any]:
    seen: list[Request] = []

    def recording(request: Request) -> Any:
        seen.append(request)
        return handler(request)

    return seen, recording


async def serve(factory: DatagramServerFactory, interface: str = "127.0.0.1") -> Any:
    return await udp_server_from_string(reactor, f"udp:0:interface={interface}").listen(factory)


async def client(port: Any, host: str = "127.0.0.1", **kw: Any) -> DatagramClientProtocol:
    escaped = host.replace(":", "\\:")
    return await connect_datagram(f"udp:host={escaped}:port={port.getHost().port}", **kw)


@pytest_twisted.ensureDeferred
async def test_spf1_rules_over_ipv4() -> None:
    factory = DatagramServerFactory(echo)
    port = await serve(factory)
    peer = Peer()
    peer_port = reactor.listenUDP(0, peer, interface="127.0.0.1")
    target = ("127.0.0.1", port.getHost().port)
    try:
        good = encode_datagram(Kind.REQUEST, 7, b"hello")
        for bad in (
            b"SP",  # too short
            good[:-1],  # truncated: the length field says more than follows
            good + b"!",  # trailing bytes
            b"HTTP/1.1 200 OK\r\n\r\n",  # foreign
            encode_datagram(Kind.RESPONSE, 7, b"hello"),  # unexpected kind
        ):
            peer.transport.write(bad, target)
        peer.transport.write(good, target)
        assert await peer.receive() == encode_datagram(Kind.RESPONSE, 7, b"hello")
        peer.transport.write(encode_datagram(Kind.PING, 8, b"p"), target)
        assert await peer.receive() == encode_datagram(Kind.PONG, 8, b"p")
        await peer.nothing_within(0.3)
        drops = factory.stats.drops
        assert [drops[r] for r in list(DropReason)[:5]] == [1, 1, 1, 1, 1]
        assert factory.stats.replied == 2
    finally:
        await port.stopListening()
        await peer_port.stopListening()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("mode", ["spf1", "raw"])
async def test_60kb_datagram_arrives_whole(mode: str) -> None:
    seen, handler = record_peers(sha256)
    port = await serve(DatagramServerFactory(handler, mode=mode))  # type: ignore[arg-type]
    proto = await client(port, mode=mode)
    payload = bytes(range(256)) * 240  # 61440 bytes: far over Twisted's default 8192-byte reads
    try:
        answer = await proto.request(payload, timeout=10)
        assert answer == hashlib.sha256(payload).hexdigest().encode() + b"\n"
        assert len(seen[0].payload) == 61440
    finally:
        await proto.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_answer_too_big_for_a_datagram_is_error_2() -> None:
    port = await serve(DatagramServerFactory(lambda r: b"x" * int(r.payload)))
    proto = await client(port)
    try:
        fits = await proto.request(str(MAX_UDP_PAYLOAD - 12).encode(), timeout=10)
        assert len(fits) == MAX_UDP_PAYLOAD - 12
        with pytest.raises(RemoteError) as raised:
            await proto.request(str(MAX_UDP_PAYLOAD - 11).encode(), timeout=10)
        assert raised.value.code == ErrorCode.TOO_LARGE
        with pytest.raises(PayloadTooLarge):
            await proto.request(b"x" * MAX_UDP_PAYLOAD)
    finally:
        await proto.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_retransmission_is_answered_once() -> None:
    calls: list[bytes] = []

    async def slow_count(request: Request) -> bytes:
        calls.append(request.payload)
        await deferLater(reactor, 0.4, lambda: None)
        return b"answer %d" % len(calls)

    factory = DatagramServerFactory(slow_count)
    port = await serve(factory)
    proto = await client(port, interval=0.05, retries=10)
    peer = Peer()
    peer_port = reactor.listenUDP(0, peer, interface="127.0.0.1")
    try:
        assert await proto.request(b"q", timeout=10) == b"answer 1"
        assert proto.sent >= 3  # it retransmitted while the handler ran
        assert calls == [b"q"]
        assert factory.stats.drops[DropReason.IN_PROGRESS] >= 2
        # A retransmission after the answer (the answer was lost): the cached answer.
        repeat = encode_datagram(Kind.REQUEST, 99, b"r")
        target = ("127.0.0.1", port.getHost().port)
        peer.transport.write(repeat, target)
        first = await peer.receive()
        peer.transport.write(repeat, target)
        assert await peer.receive() == first == encode_datagram(Kind.RESPONSE, 99, b"answer 2")
        assert calls == [b"q", b"r"]
        assert factory.stats.from_cache == 1
    finally:
        await proto.close()
        await port.stopListening()
        await peer_port.stopListening()


@pytest_twisted.ensureDeferred
async def test_ipv6() -> None:
    seen, handler = record_peers()
    port = await serve(DatagramServerFactory(handler), V6)
    proto = await client(port, "::1")
    try:
        assert await proto.request(b"six", timeout=10) == b"six"
        assert await proto.ping(b"p", timeout=10) == b"p"
        assert isinstance(seen[0].peer, IPv6Address)
        assert seen[0].peer.host == "::1"
    finally:
        await proto.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_dual_stack_serves_ipv4_peers_as_plain_ipv4() -> None:
    seen, handler = record_peers()
    port = await serve(DatagramServerFactory(handler), ANY6)
    assert port.getHandle().getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    v4 = await client(port, "127.0.0.1")
    v6 = await client(port, "::1")
    by_name = await client(port, "localhost")  # whichever address localhost has first
    try:
        assert await v4.request(b"four", timeout=10) == b"four"
        assert await v6.request(b"six", timeout=10) == b"six"
        assert await by_name.request(b"name", timeout=10) == b"name"
        four, six = seen[0].peer, seen[1].peer
        assert four == IPv4Address("UDP", "127.0.0.1", v4.transport.getHost().port)
        assert isinstance(six, IPv6Address) and six.host == "::1"
    finally:
        for proto in (v4, v6, by_name):
            await proto.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_dual_stack_where_v6only_is_the_system_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on BSD, Windows, or Linux with bindv6only=1: the endpoint turns IPV6_V6ONLY off."""

    class V6OnlyByDefault(socket.socket):
        def __init__(self, family: int = -1, kind: int = -1, *args: Any) -> None:
            super().__init__(family, kind, *args)
            if family == socket.AF_INET6:
                self.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)

    class SocketModule:
        socket = V6OnlyByDefault

        def __getattr__(self, name: str) -> Any:
            return getattr(socket, name)

    monkeypatch.setattr(endpoints, "socket", SocketModule())
    port = await serve(DatagramServerFactory(echo), ANY6)
    monkeypatch.undo()
    v4 = await client(port, "127.0.0.1")
    try:
        assert await v4.request(b"four", timeout=10) == b"four"
    finally:
        await v4.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_icmp_refusal_fails_fast_and_the_client_lives_on(host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    number = free_port(family, socket.SOCK_DGRAM)
    escaped = host.replace(":", "\\:")
    proto = await connect_datagram(f"udp:host={escaped}:port={number}")
    try:
        start = time.monotonic()
        with pytest.raises(PortUnreachable):
            await proto.request(b"anyone?", timeout=10)
        assert time.monotonic() - start < 5
        # The socket survived the refusal: once a server is there, it answers.
        port = await udp_server_from_string(reactor, f"udp:{number}:interface={escaped}").listen(
            DatagramServerFactory(echo)
        )
        try:
            assert await proto.request(b"now?", timeout=10) == b"now?"
        finally:
            await port.stopListening()
    finally:
        await proto.close()


@pytest_twisted.ensureDeferred
async def test_slow_handler_does_not_block_other_peers() -> None:
    async def handler(request: Request) -> bytes:
        if request.payload == b"slow":
            await deferLater(reactor, 3, lambda: None)
        return request.payload

    port = await serve(DatagramServerFactory(handler))
    slow, fast = await client(port), await client(port)
    try:
        waiting = slow.request(b"slow", timeout=10)
        start = time.monotonic()
        assert await fast.request(b"fast", timeout=10) == b"fast"
        assert time.monotonic() - start < 2
        assert await waiting == b"slow"
    finally:
        await slow.close()
        await fast.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_socat_is_a_raw_mode_client() -> None:
    socat = require_tool("socat")
    port = await serve(DatagramServerFactory(sha256, mode="raw"))
    try:
        result = await deferToThread(
            subprocess.run,
            [socat, "-t", "2", "-", f"UDP:127.0.0.1:{port.getHost().port}"],
            input=b"hello",
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == hashlib.sha256(b"hello").hexdigest().encode() + b"\n"
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_one_service_on_two_sockets() -> None:
    factory = DatagramServerFactory(echo)
    first, second = await serve(factory), await serve(factory, V6)
    a, b = await client(first), await client(second, "::1")
    try:
        assert await a.request(b"a", timeout=10) == b"a"
        assert await b.request(b"b", timeout=10) == b"b"
        assert factory.stats.handled == 2
        assert len(factory.protocols) == 2
    finally:
        await a.close()
        await b.close()
        await first.stopListening()
        await second.stopListening()
    assert factory.protocols == set()


@pytest_twisted.ensureDeferred
async def test_replies_go_straight_to_the_socket_on_every_family() -> None:
    """Replies skip the port's ``write`` (and its address checks) on IPv4, IPv6 and dual stack."""

    def no_write(datagram: bytes, addr: Any = None) -> None:
        raise AssertionError("a reply went through Port.write")

    for interface, hosts in (("127.0.0.1", ["127.0.0.1"]), (V6, ["::1"]), (ANY6, ["127.0.0.1", "::1"])):
        factory = DatagramServerFactory(echo)
        port = await serve(factory, interface)
        port.write = no_write
        clients = [await client(port, host) for host in hosts]
        try:
            for proto in clients:
                assert await proto.request(b"direct", timeout=10) == b"direct"
                assert await proto.ping(b"p", timeout=10) == b"p"
            assert (factory.stats.served, factory.stats.replied) == (len(hosts), 2 * len(hosts))
        finally:
            for proto in clients:
                await proto.close()
            await port.stopListening()

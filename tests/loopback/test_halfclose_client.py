"""``halfclose_request`` against the half-close server (and others) over real sockets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from zope.interface import implementer

from sockproto import AnswerTimeout, HalfCloseServerFactory, ServerReset, halfclose_request
from sockproto.halfclose import AnswerTooLarge, HalfCloseUnsupported
from sockproto.handlers import echo
from sockproto.request import Request

from ..helpers import free_port, listen
from .halfclose_peers import FAMILIES, serve, until
from .tls import make_certificate


def describe_peer(request: Request) -> bytes:
    return type(request.peer).__name__.encode() + b"|" + request.payload


@pytest.mark.parametrize("family", FAMILIES)
@pytest_twisted.ensureDeferred
async def test_request_over_each_family(family: str, tmp_path: Path) -> None:
    factory = HalfCloseServerFactory(describe_peer)
    port, target = await serve(factory, family, tmp_path)
    expected = {"tcp": IPv4Address, "tcp6": IPv6Address, "unix": UNIXAddress}[family].__name__.encode()
    try:
        assert await halfclose_request(target.endpoint, b"hi") == expected + b"|hi"
        big = os.urandom(1024 * 1024 - len(expected) - 1)
        factory.handler = echo
        assert await halfclose_request(target.endpoint, big) == big  # exactly the 1 MiB limit
        assert await halfclose_request(target.endpoint, b"") == b""
        await until(lambda: not factory.connections)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_hundred_concurrent_requests(tmp_path: Path) -> None:
    factory = HalfCloseServerFactory(lambda r: r.payload.upper())
    port, target = await serve(factory, "tcp", tmp_path)
    try:
        payloads = [f"request {i}".encode() for i in range(100)]
        answers = await gatherResults([halfclose_request(target.endpoint, p) for p in payloads])
        assert answers == [p.upper() for p in payloads]
        await until(lambda: not factory.connections)
    finally:
        await port.stopListening()


@pytest.mark.parametrize("family", ["tcp", "tcp6"])
@pytest_twisted.ensureDeferred
async def test_server_resets_are_errors(family: str, tmp_path: Path) -> None:
    def handler(request: Request) -> bytes:
        if request.payload == b"fail":
            raise RuntimeError("expected by the test")
        return request.payload

    port, target = await serve(HalfCloseServerFactory(handler, max_request=100), family, tmp_path)
    try:
        for request in (b"x" * 101, b"x" * 4 * 1024 * 1024, b"fail"):
            with pytest.raises(ServerReset, match="reset"):
                await halfclose_request(target.endpoint, request)
        assert await halfclose_request(target.endpoint, b"ok") == b"ok"
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_answer_timeout_and_server_side_cleanup(tmp_path: Path) -> None:
    never: list[Deferred[bytes]] = []

    def handler(request: Request) -> Deferred[bytes]:
        never.append(Deferred())
        return never[-1]

    factory = HalfCloseServerFactory(handler)
    port, target = await serve(factory, "tcp", tmp_path)
    try:
        with pytest.raises(AnswerTimeout, match=r"within 0\.3 s"):
            await halfclose_request(target.endpoint, b"q", timeout=0.3)
        # The server cannot see that peer leave while its handler runs; its factory
        # knows the connection, so it can be dropped (and the handler is cancelled).
        assert len(factory.connections) == 1
        for proto in list(factory.connections):
            proto.transport.abortConnection()  # type: ignore[union-attr]
        await until(lambda: not factory.connections)
        assert never[0].called
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_answer_too_large(tmp_path: Path) -> None:
    port, target = await serve(HalfCloseServerFactory(echo), "tcp", tmp_path)
    try:
        with pytest.raises(AnswerTooLarge):
            await halfclose_request(target.endpoint, b"y" * 5000, max_answer=4096)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_connection_refused() -> None:
    with pytest.raises(ConnectionRefusedError):
        await halfclose_request(f"tcp:host=127.0.0.1:port={free_port()}", b"q")


@implementer(IHalfCloseableProtocol)
class ClosesEarly(Protocol):
    """A broken server: closes (cleanly) as soon as the first bytes arrive."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_server_closing_before_the_request_is_read_is_not_an_answer() -> None:
    port = await listen(Factory.forProtocol(ClosesEarly))
    try:
        with pytest.raises(ServerReset):
            await halfclose_request(f"tcp:host=127.0.0.1:port={port.getHost().port}", b"z" * 8 * 1024 * 1024)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_tls_is_refused_by_the_client(tmp_path: Path) -> None:
    pem, cert = make_certificate(tmp_path)
    factory = HalfCloseServerFactory(echo)
    port = await listen(factory, f"ssl:0:interface=127.0.0.1:privateKey={pem}")
    try:
        options = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(cert))
        endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port))
        with pytest.raises(HalfCloseUnsupported, match="twisted#5341"):
            await halfclose_request(endpoint, b"secret", timeout=5)
        await until(lambda: not factory.connections)
    finally:
        await port.stopListening()

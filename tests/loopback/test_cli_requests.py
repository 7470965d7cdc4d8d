"""The real ``sockproto`` command (frame, datagram, halfclose, ping) against loopback servers.

Every subcommand and every exit status: 0 answered, 1 server ERROR, 2 usage error,
3 could not connect / reset / timed out.  Servers run in the test's reactor; the command
runs in a subprocess (``python -m sockproto``).
"""

from __future__ import annotations

import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import deferLater
from twisted.protocols.policies import WrappingFactory

from sockproto import INT32, FrameServerFactory
from sockproto.datagram.endpoints import udp_server_from_string
from sockproto.datagram.server import DatagramServerFactory
from sockproto.halfclose.server import HalfCloseServerFactory
from sockproto.request import Request

from ..helpers import free_port, listen
from .cli_run import sockproto, spawn
from .tls import make_certificate

SLOW: list[Deferred[bytes]] = []


def handler(request: Request) -> bytes | Deferred[bytes]:
    """Echo; ``fail`` raises (ERROR 4, or a reset for half-close); ``slow`` never answers."""
    if request.payload == b"fail":
        raise ValueError("asked to fail")
    if request.payload == b"slow":
        d: Deferred[bytes] = Deferred()
        SLOW.append(d)
        return d
    return request.payload


@pytest_twisted.async_yield_fixture()
async def frame_port() -> AsyncIterator[int]:
    port = await listen(FrameServerFactory(handler))
    yield port.getHost().port
    await port.stopListening()


@pytest_twisted.async_yield_fixture()
async def udp_port() -> AsyncIterator[int]:
    port = await udp_server_from_string(reactor, r"udp:0:interface=\:\:").listen(
        DatagramServerFactory(handler)
    )
    yield port.getHost().port
    await port.stopListening()


@pytest_twisted.async_yield_fixture()
async def halfclose_port() -> AsyncIterator[int]:
    port = await listen(HalfCloseServerFactory(handler))
    yield port.getHost().port
    await port.stopListening()


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


# -- frame ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_frame_shorthand_ipv4_and_name(frame_port: int, host: str) -> None:
    r = await sockproto("frame", f"{host}:{frame_port}", "--data", "hello")
    assert (r.code, r.out, r.err) == (0, b"hello", "")


@pytest_twisted.ensureDeferred
async def test_frame_shorthand_ipv6() -> None:
    port = await listen(FrameServerFactory(handler), r"tcp6:0:interface=\:\:1")
    try:
        r = await sockproto("frame", f"[::1]:{port.getHost().port}", "--data", "six")
        assert (r.code, r.out, r.err) == (0, b"six", "")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_frame_twisted_strings_tcp_and_unix(frame_port: int, tmp_path: Path) -> None:
    r = await sockproto("frame", f"tcp:host=127.0.0.1:port={frame_port}", "--data", "tcp")
    assert (r.code, r.out) == (0, b"tcp")
    path = tmp_path / "frame.sock"
    port = await listen(FrameServerFactory(handler), f"unix:{path}")
    try:
        r = await sockproto("frame", f"unix:path={path}", "--data", "unix")
        assert (r.code, r.out, r.err) == (0, b"unix", "")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_frame_tls_string(tmp_path: Path) -> None:
    pem, cert = make_certificate(tmp_path)
    roots = tmp_path / "roots"
    roots.mkdir()
    (roots / "ca.pem").write_bytes(cert)
    port = await listen(FrameServerFactory(handler), f"ssl:0:interface=127.0.0.1:privateKey={pem}")
    try:
        endpoint = f"tls:host=localhost:port={port.getHost().port}:trustRoots={roots}"
        r = await sockproto("frame", endpoint, "--data", "secret")
        assert (r.code, r.out, r.err) == (0, b"secret", "")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_frame_payload_from_stdin_file_and_count(frame_port: int, tmp_path: Path) -> None:
    binary = bytes(range(256)) * 64
    r = await sockproto("frame", f"127.0.0.1:{frame_port}", stdin=binary)
    assert (r.code, r.out) == (0, binary)
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"from a file\n")
    r = await sockproto("frame", f"127.0.0.1:{frame_port}", "--file", str(payload), "--count", "3")
    assert (r.code, r.out) == (0, b"from a file\n" * 3)


@pytest_twisted.ensureDeferred
async def test_frame_int32_header() -> None:
    port = await listen(FrameServerFactory(handler, header=INT32))
    try:
        r = await sockproto(
            "frame", f"127.0.0.1:{port.getHost().port}", "--header", "int32", "--data", "bare"
        )
        assert (r.code, r.out) == (0, b"bare")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_frame_server_error_exits_1_with_code_and_message(frame_port: int) -> None:
    r = await sockproto("frame", f"127.0.0.1:{frame_port}", "--data", "fail")
    assert (r.code, r.out) == (1, b"")
    assert one_line(r.err) == (
        "sockproto frame: server error 4 (HANDLER_FAILED): handler failed: ValueError: asked to fail"
    )


@pytest_twisted.ensureDeferred
async def test_frame_count_stops_at_first_error(frame_port: int) -> None:
    r = await sockproto("frame", f"127.0.0.1:{frame_port}", "--data", "fail", "--count", "3")
    assert r.code == 1 and len(r.err_lines) == 1


@pytest_twisted.ensureDeferred
async def test_frame_refused_exits_3() -> None:
    r = await sockproto("frame", f"127.0.0.1:{free_port()}", "--data", "x")
    assert (r.code, r.out) == (3, b"")
    assert "could not connect to 127.0.0.1:" in one_line(r.err)


@pytest_twisted.ensureDeferred
async def test_frame_timeout_exits_3(frame_port: int) -> None:
    r = await sockproto("frame", f"127.0.0.1:{frame_port}", "--data", "slow", "--timeout", "0.3")
    assert r.code == 3
    assert "timed out: no answer within 0.3 s" in one_line(r.err)


@pytest_twisted.ensureDeferred
async def test_frame_reset_exits_3() -> None:
    """A peer that accepts and resets at once (not a sockproto server)."""
    from twisted.internet.protocol import Factory, Protocol

    class Reset(Protocol):
        def dataReceived(self, data: bytes) -> None:
            assert self.transport is not None
            self.transport.abortConnection()  # type: ignore[attr-defined]

    port = await listen(Factory.forProtocol(Reset))
    try:
        r = await sockproto("frame", f"127.0.0.1:{port.getHost().port}", "--data", "x")
        assert r.code == 3
        assert "before the answer came" in one_line(r.err)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("frame",), "required: ENDPOINT"),
        (("frame", "127.0.0.1"), "expected HOST:PORT"),
        (("frame", "::1:8750"), "[::1]:8750"),
        (("frame", "h:1", "--timeout", "never"), "--timeout"),
        (("frame", "udp:host=127.0.0.1:port=1"), "datagram service"),
        (("nosuch",), "invalid choice"),
    ],
)
async def test_usage_errors_exit_2(args: tuple[str, ...], expected: str) -> None:
    r = await sockproto(*args)
    assert (r.code, r.out) == (2, b"")
    assert expected in one_line(r.err)


@pytest_twisted.ensureDeferred
async def test_interrupt_exits_130(frame_port: int) -> None:
    before = len(SLOW)
    done, process = spawn("frame", f"127.0.0.1:{frame_port}", "--data", "slow", "--timeout", "60")
    for _ in range(1500):  # until the server holds the request
        if len(SLOW) > before:
            break
        await deferLater(reactor, 0.01, lambda: None)
    process.signalProcess(signal.SIGINT)
    r = await done
    assert r.code == 130
    assert r.err.strip().endswith("sockproto frame: interrupted")
    assert "Traceback" not in r.err


@pytest_twisted.ensureDeferred
async def test_closed_stdout_stops_quietly(frame_port: int) -> None:
    """``sockproto frame ... --count 100000 | head -c 10``: status 141, as on SIGPIPE, no message."""
    r = await sockproto(
        "frame", f"127.0.0.1:{frame_port}", "--data", "x" * 1000, "--count", "100000", close_stdout_after=10
    )
    assert (r.code, r.err) == (141, "")


# -- datagram -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    "where", ["127.0.0.1:{port}", "[::1]:{port}", "localhost:{port}", "udp:host=127.0.0.1:port={port}"]
)
async def test_datagram_answered(udp_port: int, where: str) -> None:
    r = await sockproto("datagram", where.format(port=udp_port), "--data", "dg", "--count", "2")
    assert (r.code, r.out, r.err) == (0, b"dgdg", "")


@pytest_twisted.ensureDeferred
async def test_datagram_raw_mode_from_stdin() -> None:
    port = await udp_server_from_string(reactor, "udp:0:interface=127.0.0.1").listen(
        DatagramServerFactory(lambda r: r.payload[::-1], mode="raw")
    )
    try:
        r = await sockproto("datagram", f"127.0.0.1:{port.getHost().port}", "--header", "raw", stdin=b"raw!")
        assert (r.code, r.out) == (0, b"!war")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_datagram_server_error_exits_1(udp_port: int) -> None:
    r = await sockproto("datagram", f"127.0.0.1:{udp_port}", "--data", "fail")
    assert r.code == 1
    assert "server error 4 (HANDLER_FAILED)" in one_line(r.err)


@pytest_twisted.ensureDeferred
async def test_datagram_nobody_listening_exits_3() -> None:
    r = await sockproto("datagram", f"127.0.0.1:{free_port(kind=socket.SOCK_DGRAM)}", "--data", "x")
    assert r.code == 3
    assert "could not connect" in one_line(r.err)


@pytest_twisted.ensureDeferred
async def test_datagram_no_answer_times_out_exits_3() -> None:
    class Silent(DatagramProtocol):
        def datagramReceived(self, datagram: bytes, addr: Any) -> None:
            pass

    port = reactor.listenUDP(0, Silent(), interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        r = await sockproto("datagram", f"127.0.0.1:{port.getHost().port}", "--data", "x", "--timeout", "0.5")
        assert r.code == 3
        assert "timed out: no answer within 0.5 s" in one_line(r.err)
    finally:
        await port.stopListening()


# -- halfclose ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_halfclose_answered(halfclose_port: int) -> None:
    r = await sockproto("halfclose", f"127.0.0.1:{halfclose_port}", "--count", "2", stdin=b"whole request")
    assert (r.code, r.out, r.err) == (0, b"whole request" * 2, "")


@pytest_twisted.ensureDeferred
async def test_halfclose_reset_exits_3(halfclose_port: int) -> None:
    r = await sockproto("halfclose", f"127.0.0.1:{halfclose_port}", "--data", "fail")
    assert (r.code, r.out) == (3, b"")
    assert "reset" in one_line(r.err)


@pytest_twisted.ensureDeferred
async def test_halfclose_timeout_and_refused_exit_3(halfclose_port: int) -> None:
    r = await sockproto("halfclose", f"127.0.0.1:{halfclose_port}", "--data", "slow", "--timeout", "0.3")
    assert r.code == 3 and "timed out" in one_line(r.err)
    r = await sockproto("halfclose", f"127.0.0.1:{free_port()}", "--data", "x")
    assert r.code == 3 and "could not connect" in one_line(r.err)


@pytest_twisted.ensureDeferred
async def test_halfclose_behind_a_protocol_wrapper_exits_3() -> None:
    """A half-close hidden by a ``ProtocolWrapper`` (as Twisted's ``haproxy:`` does) is no answer.

    The wrapper does not provide ``IHalfCloseableProtocol``, so the client's half-close
    would end the whole connection: the server would close without answering, a FIN the
    client could not tell from an empty answer.  The server refuses such a transport
    with a reset, so the command exits 3, not 0 with nothing on standard output.
    """
    port = await listen(WrappingFactory(HalfCloseServerFactory(handler)))
    try:
        r = await sockproto("halfclose", f"127.0.0.1:{port.getHost().port}", "--data", "hello")
        assert (r.code, r.out) == (3, b"")
        assert "reset" in one_line(r.err)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_halfclose_server_closing_before_the_request_is_read_exits_3() -> None:
    """A server that closes at once (FIN before the client's own half-close) gave no answer."""
    port = await listen(Factory.forProtocol(_ClosesAtOnce))
    try:
        r = await sockproto("halfclose", f"127.0.0.1:{port.getHost().port}", stdin=b"x" * 4 * 1024 * 1024)
        assert (r.code, r.out) == (3, b"")
    finally:
        await port.stopListening()


class _ClosesAtOnce(Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


# -- ping -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ping_stream_and_udp(frame_port: int, udp_port: int) -> None:
    r = await sockproto("ping", f"127.0.0.1:{frame_port}", "--count", "2")
    assert (r.code, r.out) == (0, b"")
    assert [line.split(":")[0] for line in r.err_lines] == [
        "pong 1 from 127.0.0.1",
        "pong 2 from 127.0.0.1",
    ]
    r = await sockproto("ping", f"udp:host=127.0.0.1:port={udp_port}", "--data", "echo me")
    assert (r.code, r.out) == (0, b"echo me")
    assert r.err.startswith("pong 1 from udp:host=127.0.0.1")


@pytest_twisted.ensureDeferred
async def test_ping_refused_exits_3() -> None:
    r = await sockproto("ping", f"[::1]:{free_port(socket.AF_INET6)}")
    assert r.code == 3 and "could not connect" in one_line(r.err)

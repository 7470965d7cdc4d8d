"""Mutual TLS over real loopback sockets: the ``mtls:`` endpoint, the peer's certificate,
each refusal seen from both sides, third-party clients and the real twistd."""

from __future__ import annotations

import os
import socket
import ssl
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import provider

from sockproto import FrameServerFactory, connect_frame
from sockproto.request import Request

from ..helpers import BIN, free_port, listen, require_tool, wait_for_port
from .cli_run import sockproto
from .tls import Pki, make_pki

REQUEST = struct.pack(">2sBBII", b"SP", 1, 1, 7, 2) + b"hi"


def whoami(request: Request) -> bytes:
    """Answer with the subject of the client's certificate."""
    cert = request.peer_certificate
    return b"none" if cert is None else cert.subject.encode()


def answer_of(frame: bytes) -> bytes:
    """The payload of one SPF/1 RESPONSE."""
    assert frame[:4] == b"SP\x01\x02", frame
    return frame[12 : 12 + struct.unpack(">I", frame[8:12])[0]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_events() -> Iterator[list[dict[str, Any]]]:
    """The ``tls_refused`` events the services log while the test runs."""
    events: list[dict[str, Any]] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        if event.get("sockproto_event") == "tls_refused":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


async def serve(pki: Pki) -> Any:
    return await listen(FrameServerFactory(whoami), pki.listen())


async def settle() -> None:
    """Let the server see the end of a connection the client gave up."""
    for _ in range(20):
        d: Deferred[None] = Deferred()
        reactor.callLater(0.01, d.callback, None)  # type: ignore[attr-defined]
        await d


# -- the library client ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_good_client_is_served_and_its_subject_reaches_the_handler(pki: Pki) -> None:
    port = await serve(pki)
    try:
        client = await connect_frame(pki.client(port.getHost().port))
        assert await client.request(b"x") == b"CN=alice,O=sockproto tests"
        assert await client.request(b"y") == b"CN=alice,O=sockproto tests"  # the same, per connection
        await client.close()
    finally:
        await port.stopListening()


@pytest.mark.parametrize(
    ("name", "client_says", "server_says"),
    [
        (None, "certificate required", "the client sent no certificate"),
        (
            "stranger",
            "unknown ca",
            "client certificate 'CN=stranger,O=sockproto tests' refused: unable to get local",
        ),
        (
            "expired",
            "certificate expired",
            "client certificate 'CN=expired,O=sockproto tests' refused: certificate has",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_client_certificate_is_refused_on_both_sides(
    pki: Pki, tls_events: list[dict[str, Any]], name: str | None, client_says: str, server_says: str
) -> None:
    port = await serve(pki)
    try:
        client = await connect_frame(
            pki.client(port.getHost().port, name)
        )  # TLS 1.3: the server refuses after
        with pytest.raises(SSL.Error, match=client_says):
            await client.request(b"x", timeout=10)
        await settle()
    finally:
        await port.stopListening()
    assert [e["why"] for e in tls_events if server_says in e["why"]], tls_events
    assert all(e["log_level"].name == "warn" and e["peer"].host == "127.0.0.1" for e in tls_events)


@pytest_twisted.ensureDeferred
async def test_wrong_host_name_is_refused_by_the_client(pki: Pki) -> None:
    port = await serve(pki)
    try:
        with pytest.raises(VerificationError, match=r"wrong\.example"):
            client = await connect_frame(pki.client(port.getHost().port, host="wrong.example"))
            await client.request(b"x", timeout=10)
    finally:
        await port.stopListening()


# -- the sockproto command ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_cli_presents_a_certificate_and_reports_each_refusal(pki: Pki) -> None:
    port = await serve(pki)
    number = port.getHost().port
    try:
        r = await sockproto("frame", pki.client(number), "--data", "x")
        assert (r.code, r.out, r.err) == (0, b"CN=alice,O=sockproto tests", "")
        expected = {
            None: "TLS handshake failed: the server requires a client certificate",
            "stranger": "TLS handshake failed: the server does not trust the CA of the client certificate",
            "expired": "TLS handshake failed: the server refused the client certificate: it has expired",
        }
        for name, message in expected.items():
            r = await sockproto("frame", pki.client(number, name), "--data", "x")
            assert r.code == 3 and message in r.err, (name, r)
        r = await sockproto("frame", pki.client(number, host="wrong.example"), "--data", "x")
        assert r.code == 3, r
        assert "TLS handshake failed: the server's certificate does not match the host name" in r.err, r
        assert "wrong.example" in r.err
    finally:
        await port.stopListening()


# -- third-party clients: real processes -------------------------------------------------


class _Peer(ProcessProtocol):
    """Send one request, close stdin once the whole answer came (TLS has no half-close)."""

    def __init__(self, done: Deferred[tuple[int | None, bytes, str]]) -> None:
        self.done = done
        self.out = bytearray()
        self.err = bytearray()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(REQUEST)

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if len(self.out) >= 12 and len(self.out) >= 12 + struct.unpack(">I", self.out[8:12])[0]:
            assert self.transport is not None
            self.transport.closeStdin()

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        value: Any = reason.value
        code = value.exitCode if isinstance(value, (ProcessDone, ProcessTerminated)) else None
        self.done.callback((code, bytes(self.out), self.err.decode(errors="replace")))


async def run_peer(*argv: str) -> tuple[int | None, bytes, str]:
    done: Deferred[tuple[int | None, bytes, str]] = Deferred()
    process = reactor.spawnProcess(_Peer(done), argv[0], list(argv), env=dict(os.environ))  # type: ignore[attr-defined]
    killer = reactor.callLater(15, process.signalProcess, "KILL")  # type: ignore[attr-defined]
    try:
        return await done
    finally:
        if killer.active():
            killer.cancel()


def s_client(pki: Pki, port: int, name: str | None, host: str = "localhost") -> list[str]:
    argv = [require_tool("openssl"), "s_client", "-quiet", "-connect", f"127.0.0.1:{port}"]
    argv += ["-CAfile", str(pki.ca), "-verify_hostname", host, "-verify_return_error"]
    if name is not None:
        argv += ["-cert", str(pki.cert(name)), "-key", str(pki.key(name))]
    return argv


def socat(pki: Pki, port: int, name: str, tls12: bool = False) -> list[str]:
    address = f"OPENSSL:127.0.0.1:{port},cafile={pki.ca},commonname=localhost"
    address += f",cert={pki.cert(name)},key={pki.key(name)}"
    if tls12:  # the server refuses within the handshake, not after it as with TLS 1.3
        address += ",openssl-max-proto-version=TLS1.2"
    return [require_tool("socat"), "-t", "5", "-", address]


@pytest_twisted.ensureDeferred
async def test_openssl_s_client(pki: Pki, tls_events: list[dict[str, Any]]) -> None:
    port = await serve(pki)
    number = port.getHost().port
    try:
        code, out, err = await run_peer(*s_client(pki, number, "alice"))
        assert answer_of(out) == b"CN=alice,O=sockproto tests", err
        code, out, err = await run_peer(*s_client(pki, number, None))
        assert out == b"" and "alert certificate required" in err, err
        code, out, err = await run_peer(*s_client(pki, number, "alice", host="wrong.example"))
        assert code != 0 and out == b"" and "hostname mismatch" in err, err
        await settle()
    finally:
        await port.stopListening()
    whys = [e["why"] for e in tls_events]
    assert any("the client sent no certificate" in w for w in whys), whys
    # s_client, unlike Twisted, tells the server why it hangs up: an alert
    assert any("the client ended the handshake" in w and "bad certificate" in w for w in whys), whys


@pytest_twisted.ensureDeferred
async def test_socat(pki: Pki, tls_events: list[dict[str, Any]]) -> None:
    port = await serve(pki)
    number = port.getHost().port
    try:
        code, out, err = await run_peer(*socat(pki, number, "alice"))
        assert (code, answer_of(out)) == (0, b"CN=alice,O=sockproto tests"), err
        # socat 1.7 takes TLS 1.3's refusal, an alert after its handshake, for an EOF
        # (exit 0, no message); with TLS 1.2 it fails the handshake and says why
        code, out, err = await run_peer(*socat(pki, number, "stranger", tls12=True))
        assert code != 0 and out == b"" and "unknown ca" in err, err
        await settle()
    finally:
        await port.stopListening()
    assert any("'CN=stranger,O=sockproto tests' refused" in e["why"] for e in tls_events), tls_events


# -- the real twistd ---------------------------------------------------------------------


@pytest.mark.slow
def test_twistd_frame_on_mtls(pki: Pki, tmp_path: Path) -> None:
    """``twistd -n sockproto-frame --listen mtls:...``: served and verified (a Python ``ssl`` client)."""
    (tmp_path / "mtls_handler.py").write_text(
        "def whoami(request):\n"
        "    cert = request.peer_certificate\n"
        "    return b'none' if cert is None else cert.common_name.encode()\n"
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tmp_path)  # the handler only: sockproto and its plugin as installed
    proc = subprocess.Popen(
        [str(BIN / "twistd"), "--pidfile=", "-n", "sockproto-frame", "--handler", "mtls_handler:whoami",
         "--listen", pki.listen(port)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        wait_for_port(port)
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.load_cert_chain(str(pki.cert("alice")), str(pki.key("alice")))
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(REQUEST)
            assert answer_of(tls.recv(65536)) == b"alice"
        bare = ssl.create_default_context(cafile=str(pki.ca))  # no client certificate
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            bare.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(REQUEST)
            with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
                tls.recv(65536)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert "TLS with" in out and "the client sent no certificate" in out, out
    assert "Server Shut Down." in out, out


def test_twistd_halfclose_refuses_mtls(pki: Pki, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "twistd"), "--pidfile=", "-n", "sockproto-halfclose", "--listen", pki.listen()],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )  # fmt: skip
    assert result.returncode != 0
    assert "TLS endpoints cannot serve half-close requests" in result.stdout + result.stderr

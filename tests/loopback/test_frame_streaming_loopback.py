"""Streamed request frames over real sockets: tcp, tcp6, unix, tls in process; systemd under twistd.

A streaming sha256 server takes a request frame far over the 1 MiB it may hold; the
digest must match, and the connection must go on serving the next request (a PING and
a small request).  The twistd run adds the plugin (``--max-payload none``), socket
activation and the server's peak memory.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, clientFromString, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS

from sockproto import FrameServerFactory, connect_frame
from sockproto.frame.streaming import FrameStreamingProtocol
from sockproto.handlers import sha256
from sockproto.serving.streaming import streaming_form

from ..helpers import BIN, listen, socket_activated_twistd
from .test_frame_loopback import TrackingFactory
from .tls import make_certificate

MiB = 1024 * 1024


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).hexdigest().encode() + b"\n"


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("family", ["tcp", "tcp6", "unix", "tls"])
async def test_streamed_frame_over_each_endpoint(family: str, tmp_path: Path) -> None:
    factory = TrackingFactory(streaming_form(sha256), max_payload=None)
    if family == "tls":
        pem, cert = make_certificate(tmp_path)
        server = f"ssl:0:interface=127.0.0.1:privateKey={pem}"
    else:
        server = {
            "tcp": "tcp:0:interface=127.0.0.1",
            "tcp6": r"tcp6:0:interface=\:\:1",
            "unix": f"unix:{tmp_path}/frame.sock",
        }[family]
    port = await listen(factory, server)
    try:
        if family == "tls":
            options = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(cert))
            endpoint: Any = wrapClientTLS(
                options, TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
            )
        elif family == "unix":
            endpoint = clientFromString(reactor, f"unix:path={tmp_path}/frame.sock")
        else:
            host = r"\:\:1" if family == "tcp6" else "127.0.0.1"
            endpoint = clientFromString(reactor, f"tcp:host={host}:port={port.getHost().port}")
        c = await connect_frame(endpoint)
        big = os.urandom(MiB) * 24  # 24 MiB: over the non-streaming default of 16 MiB
        assert await c.request(big) == digest(big)
        assert await c.ping(b"still here") == b"still here"
        assert await c.request(b"abc") == digest(b"abc")
        await c.close()
    finally:
        await port.stopListening()
    (proto,) = factory.built
    assert isinstance(proto, FrameStreamingProtocol)
    assert factory.metrics.requests == 2


@pytest_twisted.ensureDeferred
async def test_client_streams_a_file_and_queues_requests_behind_it(tmp_path: Path) -> None:
    port = await listen(FrameServerFactory(streaming_form(sha256), max_payload=None))
    try:
        c = await connect_frame(f"tcp:host=127.0.0.1:port={port.getHost().port}")
        path = tmp_path / "body.bin"
        path.write_bytes(os.urandom(MiB) * 20)
        with path.open("rb") as f:
            streamed = c.request_stream(f, 20 * MiB)
            small = c.request(b"abc")  # sent once the streamed payload is out
            assert await streamed == digest(path.read_bytes())
            assert await small == digest(b"abc")

        async def short() -> AsyncIterator[bytes]:
            yield b"only this"

        with pytest.raises(ValueError, match="only 9 bytes"):
            await c.request_stream(short(), 100)
        await c.when_closed()  # aborted: the frame could not be completed
    finally:
        await port.stopListening()


SENDER = r"""
import socket, struct, sys, hashlib
port, size = int(sys.argv[1]), int(sys.argv[2])
block = bytes(range(256)) * 1024  # 256 KiB
h = hashlib.sha256()
with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
    s.sendall(struct.pack(">2sBBII", b"SP", 1, 1, 1, size))
    left = size
    while left:
        part = block[: min(left, len(block))]
        s.sendall(part)
        h.update(part)
        left -= len(part)
    s.sendall(struct.pack(">2sBBII", b"SP", 1, 1, 2, 2) + b"ok")
    data = b""
    while data.count(b"\n") < 2:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
first = struct.unpack(">2sBBII", data[:12])
assert first[2:4] == (2, 1), first
assert data[12:12 + first[4]] == h.hexdigest().encode() + b"\n", data
second = data[12 + first[4]:]
assert second[12:] == hashlib.sha256(b"ok").hexdigest().encode() + b"\n", second
print("ok")
"""


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_systemd_activated_twistd_streams_a_512_mib_frame_and_a_file(tmp_path: Path) -> None:
    """``twistd sockproto-frame --handler sha256 --max-payload none`` on a socket from systemd."""
    proc, port = socket_activated_twistd(
        "sockproto-frame", "--listen", "systemd:domain=INET:index=0", "--handler", "sha256",
        "--max-payload", "none", cwd=tmp_path,
    )  # fmt: skip
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        # warm up (imports, first connection), then note the idle peak
        sent = subprocess.run(
            [sys.executable, "-c", SENDER, str(port), str(MiB)], capture_output=True, text=True, timeout=60
        )
        assert sent.stdout.strip() == "ok", sent.stderr
        idle = peak_rss_kib(proc.pid)
        sent = subprocess.run(
            [sys.executable, "-c", SENDER, str(port), str(512 * MiB)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert sent.stdout.strip() == "ok", sent.stderr
        # the sockproto command sends a file as it reads it (a frame's length: the file's size)
        big = tmp_path / "big.bin"
        with big.open("wb") as f:
            block = os.urandom(MiB)
            for i in range(64):
                f.write(i.to_bytes(8, "big") + block[8:])
        done = subprocess.run(
            [str(BIN / "python"), "-m", "sockproto", "frame", f"127.0.0.1:{port}", "--file", str(big),
             "--timeout", "60"],
            capture_output=True, timeout=120, cwd=tmp_path, check=False,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout == digest(big.read_bytes())
        grown = peak_rss_kib(proc.pid) - idle
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        reader.join(timeout=10)
    log = b"".join(out).decode(errors="replace")
    assert "systemd:domain=INET:index=0" in log, log
    assert "failed" not in log.lower(), log
    # a 512 MiB request in at most the hold (DEFAULT_HIGH_WATER) plus reads in flight: far under 64 MiB
    assert grown * 1024 < 64 * MiB, f"peak RSS grew by {grown} KiB; log:\n{log}"

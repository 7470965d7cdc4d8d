"""``twistd -n sockproto-halfclose``, installed, started as users start it."""

from __future__ import annotations

import hashlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..helpers import free_port, run_twistd, twistd, wait_for_port
from .halfclose_peers import Target, nc_argv, outcome, run_tool, talk


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).hexdigest().encode() + b"\n"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Target, Target]]:
    """The plugin on a TCP port and a UNIX socket: sha256, 1 KiB requests, 1 s to send them."""
    port = free_port()
    path = tmp_path / "hc.sock"
    process = twistd(
        "sockproto-halfclose",
        "--listen", f"tcp:{port}:interface=127.0.0.1", "--listen", f"unix:{path}",
        "--handler", "sha256", "--max-request", "1KiB", "--request-timeout", "1",
        cwd=tmp_path,
    )  # fmt: skip
    try:
        wait_for_port(port)
        tcp = Target(socket.AF_INET, ("127.0.0.1", port), "", ["127.0.0.1", str(port)], "")
        unix = Target(socket.AF_UNIX, str(path), "", ["-U", str(path)], "")
        yield tcp, unix
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        log = output.decode(errors="replace")
        assert "sockproto-halfclose listening on" in log, log


def test_twistd_serves_tcp_and_unix(server: tuple[Target, Target]) -> None:
    for target in server:
        assert talk(target, b"abc") == digest(b"abc")
        assert run_tool(nc_argv(target), b"x" * 1024) == digest(b"x" * 1024)


def test_twistd_limits_are_resets(server: tuple[Target, Target]) -> None:
    tcp, _ = server
    assert isinstance(outcome(tcp, b"x" * 1025), ConnectionResetError)
    started = time.monotonic()
    assert isinstance(outcome(tcp, b"slow", half_close=False), ConnectionResetError)
    assert 0.9 < time.monotonic() - started < 10


@pytest.mark.parametrize("endpoint", ["ssl:8443:privateKey=server.pem", "tls:8443"])
def test_twistd_refuses_tls(tmp_path: Path, endpoint: str) -> None:
    done = run_twistd("-n", "--pidfile=", "sockproto-halfclose", "--listen", endpoint, cwd=tmp_path)
    assert done.returncode != 0
    message = done.stdout + done.stderr
    assert "twisted#5341" in message, message
    assert "half-close" in message
    assert endpoint in message


def test_twistd_help(tmp_path: Path) -> None:
    done = run_twistd("sockproto-halfclose", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for option in ("--listen", "--handler", "--max-request", "--request-timeout"):
        assert option in done.stdout

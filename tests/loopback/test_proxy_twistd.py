"""A real ``twistd`` on ``proxy:`` listeners, reached by the real ``sockproto`` command and sockets.

The PROXY v2 header is sent by ``sockproto ... --proxy-v2`` (or by hand), as HAProxy
would: the built-in ``peer`` handler answers the client address the server sees.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockproto.core.proxy_encode import encode_v2

from ..helpers import free_port, run_twistd, twistd, wait_for_port
from .cli_run import cli_env


def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m sockproto ARGS`` (bounded)."""
    return subprocess.run(
        [sys.executable, "-m", "sockproto", *args],
        capture_output=True,
        env=cli_env(),
        timeout=30,
        check=False,
    )


def wait_proxy_port(port: int) -> None:
    """Wait for the port; the probing connections send no header and are reset: that is fine."""
    wait_for_port(port)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """``sockproto-frame`` and ``sockproto-halfclose`` on proxy:tcp: listeners, answering the peer."""
    frame_port, half_port = free_port(), free_port()
    processes = [
        twistd(
            "sockproto-frame", "--listen", f"proxy:tcp:{frame_port}:interface=127.0.0.1",
            "--handler", "peer", "--proxy-timeout", "1", cwd=tmp_path,
        ),
        twistd(
            "sockproto-halfclose", "--listen", f"proxy:tcp:{half_port}:interface=127.0.0.1",
            "--handler", "peer", "--proxy-from", "127.0.0.1", cwd=tmp_path,
        ),
    ]  # fmt: skip
    try:
        wait_proxy_port(frame_port)
        wait_proxy_port(half_port)
        yield frame_port, half_port
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            out, _ = process.communicate(timeout=30)
            assert b"Traceback" not in out, out.decode(errors="replace")


def test_frame_through_proxy_v2(servers: tuple[int, int]) -> None:
    frame_port, _ = servers
    done = cli(
        "frame", f"127.0.0.1:{frame_port}", "--proxy-v2", "192.0.2.7:4444", "--data", "x", "--count", "2"
    )
    assert (done.returncode, done.stdout) == (0, b"192.0.2.7:4444\n" * 2), done.stderr
    done = cli("frame", f"127.0.0.1:{frame_port}", "--proxy-v2", "[2001:db8::7]:5555", "--data", "x")
    assert (done.returncode, done.stdout) == (0, b"[2001:db8::7]:5555\n"), done.stderr


def test_frame_without_a_header_is_refused(servers: tuple[int, int]) -> None:
    frame_port, _ = servers
    done = cli("frame", f"127.0.0.1:{frame_port}", "--data", "x", "--timeout", "5")
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert done.stdout == b""


def test_halfclose_through_proxy_v2(servers: tuple[int, int]) -> None:
    _, half_port = servers
    done = cli("halfclose", f"127.0.0.1:{half_port}", "--proxy-v2", "198.51.100.9:6000", "--data", "x")
    assert (done.returncode, done.stdout) == (0, b"198.51.100.9:6000\n"), done.stderr


def test_halfclose_by_hand_over_a_real_socket(servers: tuple[int, int]) -> None:
    """Header, request, ``shutdown(SHUT_WR)``: the half-close after the header is still seen."""
    _, half_port = servers
    with socket.create_connection(("127.0.0.1", half_port), timeout=10) as s:
        header = encode_v2(("203.0.113.5", 7000), ("127.0.0.1", half_port))
        for i in range(len(header)):  # the header in pieces, as a slow proxy may send it
            s.sendall(header[i : i + 1])
        s.sendall(b"request")
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    assert answer == b"203.0.113.5:7000\n"


def test_halfclose_garbage_header_is_reset(servers: tuple[int, int]) -> None:
    _, half_port = servers
    with socket.create_connection(("127.0.0.1", half_port), timeout=10) as s:
        try:  # the reset may come before the shutdown or the read: either is the refusal
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            answer = s.recv(4096)
        except OSError:
            answer = b""
    assert answer == b""


@pytest.mark.parametrize("plugin", ["sockproto-frame", "sockproto-halfclose"])
def test_proxy_before_tls_is_a_usage_error(plugin: str, tmp_path: Path) -> None:
    done = run_twistd("-n", "--pidfile=", plugin, "--listen", "proxy:ssl:0:privateKey=k.pem", cwd=tmp_path)
    assert done.returncode != 0
    assert "PROXY before TLS is not supported yet" in done.stdout + done.stderr


def test_haproxy_refusal_points_to_proxy(tmp_path: Path) -> None:
    done = run_twistd("-n", "--pidfile=", "sockproto-halfclose", "--listen", "haproxy:tcp:0", cwd=tmp_path)
    assert done.returncode != 0
    assert "--listen proxy:tcp:0" in done.stdout + done.stderr

"""``twistd -n sockproto-datagram``, installed, started as users start it."""

from __future__ import annotations

import hashlib
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from ..helpers import free_port, require_tool, run_twistd, twistd


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).hexdigest().encode() + b"\n"


def frame(kind: int, ident: int, payload: bytes) -> bytes:
    return struct.pack(">2sBBII", b"SP", 1, kind, ident, len(payload)) + payload


def exchange(address: tuple[str, int], datagram: bytes, timeout: float = 20.0) -> bytes:
    """Send ``datagram`` every 0.2 s (the server may still be starting) until one answer comes."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    deadline = time.monotonic() + timeout
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(address)
        s.settimeout(0.2)
        while True:
            try:
                s.send(datagram)
                return s.recv(65536)
            except (TimeoutError, ConnectionRefusedError):  # not listening yet
                if time.monotonic() > deadline:
                    raise


def stop(process: subprocess.Popen[bytes]) -> str:
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output.decode(errors="replace")


def test_spf1_on_dual_stack_and_ipv4(tmp_path: Path) -> None:
    dual, v4 = free_port(socket.AF_INET6, socket.SOCK_DGRAM), free_port(kind=socket.SOCK_DGRAM)
    process = twistd(
        "sockproto-datagram", "--listen", f"udp:{dual}:interface=\\:\\:",
        "--listen", f"udp:port={v4}:interface=127.0.0.1", "--handler", "sha256",
        cwd=tmp_path,
    )  # fmt: skip
    try:
        big = b"z" * 60000
        assert exchange(("127.0.0.1", dual), frame(1, 7, big)) == frame(2, 7, digest(big))
        assert exchange(("::1", dual), frame(1, 8, b"abc")) == frame(2, 8, digest(b"abc"))
        assert exchange(("127.0.0.1", v4), frame(4, 9, b"ping")) == frame(5, 9, b"ping")
    finally:
        log = stop(process)
    assert process.returncode == -signal.SIGTERM, log
    assert f"sockproto-datagram listening on udp:{dual}:interface=\\:\\:" in log, log
    assert "stops listening" in log, log


def test_raw_mode_with_socat(tmp_path: Path) -> None:
    socat = require_tool("socat")
    port = free_port(kind=socket.SOCK_DGRAM)
    process = twistd(
        "sockproto-datagram", "--listen", f"udp:{port}:interface=127.0.0.1", "--header", "raw",
        "--handler", "sha256", "--max-datagram", "1000",
        cwd=tmp_path,
    )  # fmt: skip
    try:
        assert exchange(("127.0.0.1", port), b"ready?") == digest(b"ready?")
        result = subprocess.run(
            [socat, "-t", "2", "-", f"UDP:127.0.0.1:{port}"],
            input=b"hello", capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        assert result.stdout == digest(b"hello"), result.stderr
    finally:
        stop(process)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--header", "int32"], "--header"),
        (["--max-datagram", "65508"], "--max-datagram"),
        (["--listen", "tcp:8751"], "--listen"),
        (["--listen", "udp:8751:interface=::1"], "\\:"),
        (["--handler", "nosuchmodule:thing"], "--handler"),
    ],
)
def test_bad_options_exit_with_usage_naming_the_option(tmp_path: Path, args: list[str], needle: str) -> None:
    result = run_twistd("-n", "sockproto-datagram", *args, cwd=tmp_path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert needle in output, output
    assert "Traceback" not in output, output


def test_port_in_use_fails_start(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        listen = f"udp:{port}:interface=127.0.0.1"
        result = run_twistd("--pidfile=", "-n", "sockproto-datagram", "--listen", listen, cwd=tmp_path)
    assert result.returncode != 0
    assert "Address already in use" in result.stdout + result.stderr

"""Graceful shutdown and metrics of the real twistd plugins, run as users run them.

A client with requests in flight when twistd gets SIGTERM gets every answer: the
listeners close first, the requests already received are served, then twistd ends.
The handlers used live in a module written to a temporary directory (on PYTHONPATH);
each one leaves a marker file when called, so the test knows the server has received
the requests before it sends the signal.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from sockproto.serving import prometheus

from ..helpers import BIN, free_port, wait_for_port

pytestmark = pytest.mark.timeout(90)

HANDLERS = """
import os, pathlib, itertools
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

MARKS = pathlib.Path(os.environ["SOCKPROTO_TEST_MARKS"])
_count = itertools.count()


def _mark():
    (MARKS / str(next(_count))).touch()


def slow(request):
    _mark()
    return deferLater(reactor, 1.5, lambda: request.payload.upper())


def never(request):
    _mark()
    return Deferred()
"""


def start(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """Start the installed ``twistd -n`` with the test handlers importable."""
    (tmp_path / "drain_handlers.py").write_text(HANDLERS)
    marks = tmp_path / "marks"
    marks.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(tmp_path), SOCKPROTO_TEST_MARKS=str(marks))
    return subprocess.Popen(
        [str(BIN / "twistd"), "--pidfile=", "-n", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )


def wait_for_marks(tmp_path: Path, count: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while len(list((tmp_path / "marks").iterdir())) < count:
        assert process.poll() is None, process.communicate()[0].decode(errors="replace")
        assert time.monotonic() < deadline, "the server did not receive the requests"
        time.sleep(0.02)


def finish(process: subprocess.Popen[bytes]) -> str:
    out, _ = process.communicate(timeout=30)
    return out.decode(errors="replace")


def spf1(payload: bytes, ident: int, kind: int = 1) -> bytes:
    return struct.pack(">2sBBII", b"SP", 1, kind, ident, len(payload)) + payload


def read_frames(sock: socket.socket, count: int) -> dict[int, bytes]:
    data, frames = b"", {}
    while len(frames) < count:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {frames}"
        data += chunk
        while len(data) >= 12 and len(data) >= 12 + struct.unpack(">I", data[8:12])[0]:
            size = 12 + struct.unpack(">I", data[8:12])[0]
            assert data[3] == 2, data[:size]
            frames[struct.unpack(">I", data[4:8])[0]] = data[12:size]
            data = data[size:]
    return frames


def test_frame_sigterm_answers_every_request_in_flight(tmp_path: Path) -> None:
    port = free_port()
    process = start(tmp_path, "sockproto-frame", "--listen", f"tcp:{port}:interface=127.0.0.1",
                    "--handler", "drain_handlers:slow")  # fmt: skip
    try:
        wait_for_port(port)
        with socket.create_connection(("127.0.0.1", port), timeout=20) as client:
            client.sendall(b"".join(spf1(b"req%d" % i, i) for i in range(1, 6)))
            wait_for_marks(tmp_path, 5, process)
            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(ConnectionRefusedError):  # the listener closed first
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            assert read_frames(client, 5) == {i: b"REQ%d" % i for i in range(1, 6)}
            assert client.recv(1) == b""  # then the server closed the connection
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        log = finish(process)
    assert process.returncode == -signal.SIGTERM, log
    assert "draining: 1 connection(s) open, 5 request(s) in flight" in log, log
    assert "sockproto-frame stopped: 5 request(s), 5 answer(s), 0 aborted" in log, log


def test_halfclose_and_datagram_sigterm_answer_what_was_received(tmp_path: Path) -> None:
    tcp, udp = free_port(), free_port(kind=socket.SOCK_DGRAM)
    halfclose = start(tmp_path, "sockproto-halfclose", "--listen", f"tcp:{tcp}:interface=127.0.0.1",
                      "--handler", "drain_handlers:slow")  # fmt: skip
    try:
        wait_for_port(tcp)
        clients = []
        for i in range(3):
            client = socket.create_connection(("127.0.0.1", tcp), timeout=20)
            client.sendall(b"half %d" % i)
            client.shutdown(socket.SHUT_WR)
            clients.append(client)
        wait_for_marks(tmp_path, 3, halfclose)
        halfclose.send_signal(signal.SIGTERM)
        for i, client in enumerate(clients):
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
            assert answer == b"HALF %d" % i
            client.close()
    finally:
        if halfclose.poll() is None:
            halfclose.send_signal(signal.SIGTERM)
        log = finish(halfclose)
    assert halfclose.returncode == -signal.SIGTERM, log
    for mark in (tmp_path / "marks").iterdir():
        mark.unlink()
    datagram = start(tmp_path, "sockproto-datagram", "--listen", f"udp:{udp}:interface=127.0.0.1",
                     "--handler", "drain_handlers:slow")  # fmt: skip
    try:
        time.sleep(0.5)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(20)
            deadline = time.monotonic() + 15
            while datagram.poll() is None and not list((tmp_path / "marks").iterdir()):  # until it listens
                client.sendto(spf1(b"ready?", 99), ("127.0.0.1", udp))
                time.sleep(0.2)
                assert time.monotonic() < deadline
            for i in range(1, 4):
                client.sendto(spf1(b"udp%d" % i, i), ("127.0.0.1", udp))
            wait_for_marks(tmp_path, 4, datagram)
            datagram.send_signal(signal.SIGTERM)
            answers = {}
            while len(answers) < 3:
                reply = client.recv(65536)
                ident = struct.unpack(">I", reply[4:8])[0]
                if ident != 99:
                    answers[ident] = reply[12:]
            assert answers == {i: b"UDP%d" % i for i in range(1, 4)}
    finally:
        if datagram.poll() is None:
            datagram.send_signal(signal.SIGTERM)
        log = finish(datagram)
    assert datagram.returncode == -signal.SIGTERM, log
    assert "sockproto-datagram stopped" in log, log


def test_the_drain_deadline_aborts_what_never_ends(tmp_path: Path) -> None:
    port = free_port()
    process = start(tmp_path, "sockproto-frame", "--listen", f"tcp:{port}:interface=127.0.0.1",
                    "--handler", "drain_handlers:never", "--drain-timeout", "1",
                    "--handler-timeout", "none")  # fmt: skip
    try:
        wait_for_port(port)
        with socket.create_connection(("127.0.0.1", port), timeout=20) as client:
            client.sendall(spf1(b"forever", 1))
            wait_for_marks(tmp_path, 1, process)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionResetError):
                while client.recv(65536):
                    pass
        log = finish(process)
        assert time.monotonic() - started < 10
    finally:
        if process.poll() is None:
            process.kill()
            finish(process)
    assert process.returncode == -signal.SIGTERM, log
    assert "drain deadline passed: 1 aborted" in log, log


@pytest.mark.skipif(not prometheus.available(), reason="prometheus_client is not installed")
def test_metrics_endpoint_scraped_over_http(tmp_path: Path) -> None:
    port, metrics = free_port(), free_port()
    process = start(tmp_path, "sockproto-frame", "--listen", f"tcp:{port}:interface=127.0.0.1",
                    "--metrics", f"tcp:{metrics}:interface=127.0.0.1", "--max-connections", "1")  # fmt: skip
    try:
        wait_for_port(port)
        time.sleep(0.5)  # the server has seen wait_for_port's probe connection close
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(spf1(b"counted", 1))
            assert read_frames(client, 1) == {1: b"counted"}
            with socket.create_connection(("127.0.0.1", port), timeout=10) as refused:
                assert refused.recv(65536)[:4] == b"SP\x01\x03"  # ERROR 5: over --max-connections
            wait_for_port(metrics)
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as response:
                text = response.read().decode()
    finally:
        process.send_signal(signal.SIGTERM)
        log = finish(process)
    assert 'sockproto_requests_total{service="frame"} 1.0' in text, text
    assert 'sockproto_answers_total{service="frame"} 1.0' in text, text
    assert 'sockproto_connections_open{service="frame"} 1.0' in text, text
    assert 'sockproto_connections_refused_total{service="frame"} 1.0' in text, text
    assert "process_open_fds" in text
    assert "sockproto-metrics listening on" in log, log


def test_metrics_without_prometheus_client_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "prometheus_client").mkdir()
    (tmp_path / "prometheus_client" / "__init__.py").write_text("raise ImportError('hidden for the test')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tmp_path)
    result = subprocess.run(
        [str(BIN / "twistd"), "-n", "sockproto-frame", "--metrics", "tcp:9100"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--metrics needs the prometheus_client package" in result.stdout + result.stderr

"""``--workers N`` and ``--reuse-port`` with real processes and real signals (issue 14 part 2).

The handler ``worker_handlers:pid`` answers the process id of the worker that served
the request, so a test can tell the workers apart; it lives in a module written to a
temporary directory on PYTHONPATH, which the workers inherit from the parent.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from sockproto.serving.reuse import REUSE_PORT_SUPPORTED

from ..helpers import BIN, free_port, run_twistd, wait_for_port

pytestmark = pytest.mark.timeout(120)

HANDLERS = """
import os
from twisted.internet import reactor
from twisted.internet.task import deferLater


def pid(request):
    return str(os.getpid()).encode()


def slow(request):
    return deferLater(reactor, 1.0, lambda: str(os.getpid()).encode())
"""


def start(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """Start the installed ``twistd -n`` with the test handlers importable."""
    (tmp_path / "worker_handlers.py").write_text(HANDLERS)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tmp_path)
    return subprocess.Popen(
        [str(BIN / "twistd"), "--pidfile=", "-n", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )


def stop(process: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> str:
    if process.poll() is None:
        process.send_signal(signum)
    try:
        out, _ = process.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out.decode(errors="replace")


def spf1(payload: bytes, ident: int) -> bytes:
    return struct.pack(">2sBBII", b"SP", 1, 1, ident, len(payload)) + payload


def ask(port: int, ident: int = 1) -> int:
    """One request on a new connection; return the pid that answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(spf1(b"who", ident))
        data = b""
        while len(data) < 12 or len(data) < 12 + struct.unpack(">I", data[8:12])[0]:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed after {data!r}")
            data += chunk
    assert data[3] == 2, data
    return int(data[12:])


def pids_seen(port: int, want: int, tries: int = 400) -> set[int]:
    """Ask until ``want`` different workers answered (or ``tries`` requests were made)."""
    seen: set[int] = set()
    for i in range(tries):
        seen.add(ask(port, i))
        if len(seen) >= want:
            break
    return seen


def children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def frame_workers(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = start(tmp_path, "sockproto-frame", "--workers", "2", "--handler", "worker_handlers:pid",
                    "--listen", f"tcp:{port}:interface=127.0.0.1")  # fmt: skip
    try:
        wait_for_port(port)
        wait_until(lambda: len(children(process.pid)) == 2, 15, "two workers")
        wait_until(lambda: len(pids_seen(port, 2, tries=50)) == 2, 20, "both workers listening")
        yield process, port
    finally:
        stop(process, signal.SIGKILL) if process.poll() is None else None
        for pid in children(process.pid):
            os.kill(pid, signal.SIGKILL)


def test_two_workers_both_serve_and_sigterm_stops_all(
    frame_workers: tuple[subprocess.Popen[bytes], int],
) -> None:
    process, port = frame_workers
    workers = children(process.pid)
    assert pids_seen(port, 2) == workers  # both answer; the parent accepts nothing
    log = stop(process)
    assert process.returncode == -signal.SIGTERM, log
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), log
    assert log.count("sockproto-frame stopped:") == 2, log
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_sigterm_answers_requests_in_flight(tmp_path: Path) -> None:
    port = free_port()
    process = start(tmp_path, "sockproto-frame", "--workers", "2", "--handler", "worker_handlers:slow",
                    "--listen", f"tcp:{port}:interface=127.0.0.1")  # fmt: skip
    try:
        wait_for_port(port)
        clients = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(6)]
        for i, client in enumerate(clients):
            client.sendall(spf1(b"x", i))
        time.sleep(0.5)  # received, the handlers running (1 s each)
        process.send_signal(signal.SIGTERM)
        answered = []
        for client in clients:
            with client:
                data = client.recv(4096)
                answered.append(data[3] == 2 and int(data[12:]) > 0)
    finally:
        log = stop(process)
    assert answered == [True] * 6, log
    assert process.returncode == -signal.SIGTERM, log


def test_a_killed_worker_is_restarted(frame_workers: tuple[subprocess.Popen[bytes], int]) -> None:
    process, port = frame_workers
    before = children(process.pid)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(children(process.pid) - before) == 1, 15, "a new worker")
    after = children(process.pid)
    assert victim not in after and len(after) == 2
    wait_until(lambda: pids_seen(port, 2) == after, 20, "the new worker serves")
    log = stop(process)
    assert "died unexpectedly (killed by SIGKILL)" in log and "restarting it in" in log, log


def test_sighup_restarts_one_at_a_time_losing_no_request(
    frame_workers: tuple[subprocess.Popen[bytes], int],
) -> None:
    process, port = frame_workers
    before = children(process.pid)
    counts = {"sent": 0, "answered": 0}
    errors: list[BaseException] = []
    running = threading.Event()
    running.set()

    def load() -> None:
        ident = 0
        while running.is_set() and ident < 20000:
            ident += 1
            counts["sent"] += 1
            try:
                ask(port, ident)
            except (OSError, AssertionError, ValueError) as e:
                errors.append(e)
            else:
                counts["answered"] += 1

    thread = threading.Thread(target=load)
    thread.start()
    try:
        time.sleep(0.5)
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: not (children(process.pid) & before) and len(children(process.pid)) == 2,
                   40, "both workers replaced")  # fmt: skip
        time.sleep(0.5)
    finally:
        running.clear()
        thread.join(30)
    log = stop(process)
    assert counts["sent"] > 50, counts
    assert errors == [] and counts["answered"] == counts["sent"], (counts, errors[:3], log[-3000:])
    assert "restart done" in log, log


def test_udp_workers_without_reuse_port_refused(tmp_path: Path) -> None:
    done = run_twistd("--pidfile=", "-n", "sockproto-datagram", "--workers", "2", cwd=tmp_path)
    assert done.returncode != 0
    assert "--workers 2 on UDP needs --reuse-port" in done.stdout + done.stderr


@pytest.mark.skipif(not REUSE_PORT_SUPPORTED, reason="SO_REUSEPORT balancing needs Linux")
def test_udp_workers_with_reuse_port(tmp_path: Path) -> None:
    port = free_port(kind=socket.SOCK_DGRAM)
    listen = f"udp:{port}:interface=127.0.0.1"
    process = start(tmp_path, "sockproto-datagram", "--workers", "2", "--reuse-port",
                    "--handler", "worker_handlers:pid", "--listen", listen)  # fmt: skip
    try:
        wait_until(lambda: len(children(process.pid)) == 2, 15, "two workers")
        workers = children(process.pid)
        seen: set[int] = set()
        deadline = time.monotonic() + 20  # the second worker may bind a moment after the first
        for source in range(2000):  # each source port is hashed to one worker's socket
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.settimeout(0.5)
                for _ in range(20):  # until a worker has bound
                    client.sendto(spf1(b"who", source), ("127.0.0.1", port))
                    try:
                        data = client.recv(2048)
                        break
                    except TimeoutError:
                        continue
                else:
                    pytest.fail("no answer")
                seen.add(int(data[12:]))
            if seen == workers or time.monotonic() > deadline:
                break
            time.sleep(0.01)
    finally:
        log = stop(process)
    assert seen == workers, log
    assert process.returncode == -signal.SIGTERM, log

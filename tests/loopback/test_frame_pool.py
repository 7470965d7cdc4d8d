"""FramePool against real ``twistd -n sockproto-frame`` processes: killed, stopped, frozen."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from sockproto import FramePool, RequestLost
from sockproto.serving import prometheus

from ..helpers import BIN, free_port, wait_for_port
from .cli_run import spawn

HANDLERS = """\
import os
from twisted.internet import reactor
from twisted.internet.task import deferLater

def slow(request):
    return deferLater(reactor, 0.01, lambda: request.payload)

def whoami(request):
    return str(os.getpid()).encode()
"""

needs_metrics = pytest.mark.skipif(not prometheus.available(), reason="prometheus_client is not installed")


class Server:
    """One ``twistd -n sockproto-frame`` on 127.0.0.1."""

    def __init__(self, cwd: Path, port: int, *args: str) -> None:
        (cwd / "pool_handlers.py").write_text(HANDLERS)
        self.cwd, self.port, self.args = cwd, port, args
        self.metrics = free_port() if "--metrics" in args else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = cwd / "twistd.log"

    async def start(self) -> Server:
        extra = [
            a if a != "--metrics" else f"--metrics=tcp:{self.metrics}:interface=127.0.0.1" for a in self.args
        ]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = str(self.cwd)  # the test handlers
        self.log = self.cwd / f"twistd-{self.port}-{time.monotonic_ns()}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "twistd"), "--pidfile=", "-n", "sockproto-frame",
                 "--listen", f"tcp:{self.port}:interface=127.0.0.1", *extra],
                cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        await deferToThread(wait_for_port, self.port)
        if self.metrics is not None:
            await deferToThread(wait_for_port, self.metrics)
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # in case a test froze it
            proc.kill()
        proc.wait(timeout=10)

    async def counter(self, name: str) -> float:
        """A ``sockproto_NAME{service="frame"}`` value from the server's metrics."""
        url = f"http://127.0.0.1:{self.metrics}/metrics"

        def scrape() -> str:
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())

        text = await deferToThread(scrape)
        match = re.search(rf'^sockproto_{name}{{service="frame"}} ([0-9.e+]+)$', text, re.M)
        assert match is not None, text
        return float(match.group(1))


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


@needs_metrics
@pytest_twisted.ensureDeferred
async def test_sigkill_and_restart_during_bench(tmp_path: Path) -> None:
    port = free_port()
    server = await Server(tmp_path, port, "--handler", "pool_handlers:slow").start()
    restarted = Server(tmp_path, port, "--handler", "pool_handlers:slow", "--metrics")
    done, process = spawn(
        "bench", f"127.0.0.1:{port}", "--connections", "2", "--requests", "3000", "--concurrency", "8",
        "--timeout", "5", "--json",
    )  # fmt: skip
    killer = reactor.callLater(30, process.signalProcess, "KILL")  # type: ignore[attr-defined]
    try:
        await sleep(1.5)  # the bench is running: 8 requests in flight at any time
        server.signal(signal.SIGKILL)
        server.stop()
        await restarted.start()
        result = await done
        served_after = await restarted.counter("requests_total")
    finally:
        if killer.active():
            killer.cancel()
        server.stop()
        restarted.stop()
    assert result.code == 3, result.err  # some requests failed: the exit status says so
    summary = json.loads(result.out)
    assert "RequestLost" in summary["first_error"], summary
    assert "lost with the request in flight" in summary["first_error"], summary
    assert 1 <= summary["no_answer"] < 200, summary
    assert summary["answered"] + summary["no_answer"] + summary["server_errors"] == 3000, summary
    assert summary["not_sent"] == 0, summary
    assert served_after >= 100, summary  # later requests went to the restarted server


@pytest_twisted.ensureDeferred
async def test_two_servers_one_stopped_then_everything_goes_to_the_other(tmp_path: Path) -> None:
    a = await Server(tmp_path, free_port(), "--handler", "pool_handlers:whoami").start()
    b = await Server(tmp_path, free_port(), "--handler", "pool_handlers:whoami").start()
    pool = FramePool([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"], connections=2, keepalive=None)
    try:
        await pool.wait_ready(5)
        await sleep(0.3)  # every connection is up
        answers = [await pool.request(b"", timeout=5) for _ in range(20)]
        assert {int(x) for x in answers} == {a.proc.pid, b.proc.pid}  # type: ignore[union-attr]
        b_pid = b.proc.pid  # type: ignore[union-attr]
        a.signal(signal.SIGTERM)
        await deferToThread(a.proc.wait, 10)  # type: ignore[union-attr]
        await sleep(0.2)  # the pool has read the end of its connections to a
        answers = [await pool.request(b"", timeout=5) for _ in range(50)]
        assert {int(x) for x in answers} == {b_pid}
        status_a, status_b = pool.status()
        assert (status_a.connected, status_b.connected) == (0, 2)
        assert status_a.connections_lost == 2
    finally:
        await pool.close()
        a.stop()
        b.stop()


@needs_metrics
@pytest_twisted.ensureDeferred
async def test_keepalive_keeps_an_idle_pool_through_the_idle_timeout(tmp_path: Path) -> None:
    server = await Server(tmp_path, free_port(), "--idle-timeout", "1", "--metrics").start()
    endpoint = f"127.0.0.1:{server.port}"
    await sleep(0.3)  # wait_for_port's probe connection is closed
    before = await server.counter("connections_total")
    kept = FramePool([endpoint], keepalive=0.3)
    silent = FramePool([endpoint], keepalive=None)  # the control: the server cuts it
    try:
        assert await kept.request(b"one", timeout=5) == b"one"
        assert await silent.request(b"one", timeout=5) == b"one"
        await sleep(3)
        assert await kept.request(b"two", timeout=5) == b"two"
        [status] = kept.status()
        assert (status.connections_made, status.connections_lost) == (1, 0), status
        [cut] = silent.status()
        assert cut.connections_lost >= 1, cut
        await silent.close()
        # the kept pool's one connection and the silent pool's first and its replacements
        assert await server.counter("connections_total") - before == 1 + cut.connections_made
    finally:
        await kept.close()
        await silent.close()
        server.stop()


@pytest_twisted.ensureDeferred
async def test_blackholed_server_detected_within_two_heartbeats(tmp_path: Path) -> None:
    server = await Server(tmp_path, free_port()).start()
    keepalive = 0.5
    pool = FramePool([f"127.0.0.1:{server.port}"], keepalive=keepalive)  # PONG timeout: keepalive too
    try:
        assert await pool.request(b"x", timeout=5) == b"x"
        server.signal(signal.SIGSTOP)
        frozen = time.monotonic()
        while pool.status()[0].connections_lost == 0 and time.monotonic() - frozen < 5:
            await sleep(0.02)
        detected = time.monotonic() - frozen
        [status] = pool.status()
        assert status.connections_lost == 1, status
        assert "no PONG within 0.5 s" in (status.last_failure or ""), status
        assert detected <= 2 * keepalive + 0.25, detected
        with pytest.raises(RequestLost):  # the replacement is frozen too: it goes the same way
            await pool.request(b"y", timeout=5)
    finally:
        server.signal(signal.SIGCONT)
        await pool.close(timeout=1)
        server.stop()

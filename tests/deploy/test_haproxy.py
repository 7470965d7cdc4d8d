"""A real HAProxy (``docs/deploy/haproxy.cfg``, unchanged) in front of real sockproto instances.

Everything on loopback: HAProxy listens on 127.0.0.1, the instances on
``proxy:tcp:PORT:interface=127.0.0.1``, and a client binds 127.0.0.2 (Linux routes all
of 127/8 to ``lo``) so that the address the handler sees can only be the client's, as
relayed by HAProxy's PROXY v2 header, never HAProxy's own 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ..helpers import free_port, require_tool, run_twistd
from .client import frame_exchange, frame_request
from .conftest import Deployment
from .haproxy import CONFIG, DOCS, config_variables, documented_environment

pytestmark = pytest.mark.timeout(120)

CLIENT = "127.0.0.2"


def parse(answer: bytes) -> tuple[str, int, str]:
    """``b"HOST:PORT NAME\\n"`` (the ``whoami`` handler) as ``(host, port, name)``."""
    address, name = answer.decode().split()
    host, _, port = address.rpartition(":")
    return host, int(port), name


def test_documented_environment_is_the_one_the_config_reads() -> None:
    """``haproxy.env`` sets exactly the variables ``haproxy.cfg`` reads, and HAProxy accepts both."""
    haproxy = require_tool("haproxy")
    documented = documented_environment()
    assert set(documented) == config_variables()
    done = subprocess.run(
        [haproxy, "-c", "-f", str(CONFIG)],
        env={"PATH": os.environ.get("PATH", ""), **documented},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_handler_sees_the_client_address(deployment: Deployment) -> None:
    """A client bound to 127.0.0.2 is 127.0.0.2, with its own port, on both instances."""
    seen = set()
    for ident in range(1, 9):  # leastconn takes the servers in turn when none is busy
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.bind((CLIENT, 0))
            s.connect(("127.0.0.1", deployment.frame_port))
            port = s.getsockname()[1]
            host, seen_port, name = parse(frame_exchange(s, ident=ident))
        assert (host, seen_port) == (CLIENT, port)
        seen.add(name)
    assert seen == {"frame-s1", "frame-s2"}


def test_the_health_check_is_an_spf1_ping(deployment: Deployment) -> None:
    """The frame servers are UP by a passed layer-7 check (the PONG matched), the others by a connect."""
    rows = deployment.stats.show_stat()
    for server in ("s1", "s2"):
        assert rows["frame", server]["status"] == "UP"
        assert rows["frame", server]["check_status"] == "L7OK", rows["frame", server]
        assert rows["halfclose", server]["status"] == "UP"
        assert rows["halfclose", server]["check_status"] in ("L4OK", "L7OK"), rows["halfclose", server]


def test_a_frame_listener_failing_the_ping_is_down(deployment: Deployment) -> None:
    """The check is not a mere connect: an instance that does not answer PONG goes DOWN.

    The half-close instance s1 accepts the connection and the PROXY header like a frame
    instance, but answers the PING's bytes only after a half-close, so the expect fails
    once it is put in the frame backend's place (here: its address given to frame/s1).
    """
    stats = deployment.stats
    halfclose_s1 = stats.show_stat()["halfclose", "s1"]["addr"]
    answer = stats.command(
        f"set server frame/s1 addr {halfclose_s1.rpartition(':')[0]} port {halfclose_s1.rpartition(':')[2]}"
    )
    assert "changed" in answer or "no need to change" in answer, answer
    stats.wait_status("frame", "s1", "DOWN", timeout=15)
    assert stats.show_stat()["frame", "s1"]["check_status"] in ("L7TOUT", "L7RSP"), stats.show_stat()[
        "frame", "s1"
    ]
    for ident in range(1, 5):  # the traffic goes to s2 meanwhile
        assert (
            parse(frame_request("127.0.0.1", deployment.frame_port, ident=ident, source=CLIENT))[2]
            == "frame-s2"
        )


class ClientLoop:
    """Requests through HAProxy, one new connection each, from a thread, until stopped.

    Each answer is kept with the time it arrived; each failure (a refusal, a connection
    closed without an answer, a timeout) as a message.
    """

    def __init__(self, port: int, limit: int = 20000) -> None:
        self.port = port
        self.limit = limit
        self.answers: list[tuple[float, str]] = []
        self.errors: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for ident in range(1, self.limit + 1):
            if self._done.is_set():
                return
            try:
                answer = frame_request("127.0.0.1", self.port, ident=ident, source=CLIENT)
                self.answers.append((time.monotonic(), answer.decode()))
            except OSError as e:
                self.errors.append(f"request {ident}: {type(e).__name__}: {e}")

    def __enter__(self) -> ClientLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the client loop did not stop"

    def names(self, since: float = 0.0) -> set[str]:
        """The instances that answered after ``since`` (a ``time.monotonic()``)."""
        return {answer.split()[1] for t, answer in self.answers if t > since}

    def wait(self, condition: object, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():  # type: ignore[operator]
            assert self._thread.is_alive(), f"the client loop ended before: {what}"
            assert time.monotonic() < deadline, (
                f"{what} (answers: {len(self.answers)}, errors: {self.errors[:5]})"
            )
            time.sleep(0.02)

    def wait_answers(self, count: int, since: float) -> None:
        self.wait(lambda: sum(t > since for t, _ in self.answers) >= count, f"{count} answers")


def test_drain_then_sigterm_moves_the_traffic_with_no_failed_request(deployment: Deployment) -> None:
    """The documented stop of one instance, under load: ``drain.sh``, SIGTERM, restart, ``state ready``.

    Not one request fails, the answers after the drain all come from the other
    instance, and the restarted one takes traffic again once set ready.
    """
    require_tool("socat")  # drain.sh talks to HAProxy's socket with it
    stats, s1 = deployment.stats, deployment.instances["frame", "s1"]
    with ClientLoop(deployment.frame_port) as client:
        client.wait(lambda: client.names() == {"frame-s1", "frame-s2"}, "both instances answer")
        drain = subprocess.run(
            ["sh", str(DOCS / "drain.sh"), stats.path, "frame/s1", "10"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert drain.returncode == 0, drain.stdout + drain.stderr
        drained = time.monotonic()
        assert stats.status("frame", "s1") == "DRAIN"
        s1.popen.send_signal(signal.SIGTERM)
        assert s1.popen.wait(timeout=30) == -signal.SIGTERM, s1.output()
        client.wait_answers(100, since=drained)
        assert client.names(since=drained) == {"frame-s2"}
        deployment.start("frame", "s1")  # the upgraded instance, on the same port
        stats.wait_status("frame", "s1", "DRAIN", timeout=15)  # checked UP again, still drained
        assert stats.command("set server frame/s1 state ready").strip() == ""
        ready = time.monotonic()
        client.wait(lambda: "frame-s1" in client.names(since=ready), "the restarted instance answers")
    assert client.errors == [], s1.output()[-4000:]
    assert {answer.split()[0].rpartition(":")[0] for _, answer in client.answers} == {CLIENT}


def test_sigterm_alone_moves_the_traffic(deployment: Deployment) -> None:
    """SIGTERM without draining HAProxy first: the traffic moves, at most one request is lost.

    The stopping instance closes its listener first; HAProxy's next connections to it are
    refused, and ``retries`` with ``option redispatch 1`` send them to the other server.
    But a connection the kernel accepted in the instant before the close, still in the
    listener's accept queue, is reset with it, and HAProxy, which has already forwarded
    the request, cannot retry it: that one request fails (about one stop in ten, with
    this client's connection every millisecond or two).  Hence the drain first
    (previous test, and docs/deploying.rst).
    """
    stopping = deployment.instances["frame", "s1"]
    with ClientLoop(deployment.frame_port) as client:
        client.wait(lambda: client.names() == {"frame-s1", "frame-s2"}, "both instances answer")
        stopping.popen.send_signal(signal.SIGTERM)
        assert stopping.popen.wait(timeout=30) == -signal.SIGTERM, stopping.output()
        exited = time.monotonic()
        client.wait_answers(100, since=exited)
        deployment.stats.wait_status("frame", "s1", "DOWN", timeout=10)
    assert len(client.errors) <= 1, client.errors
    assert all("closed after 0 of 12 bytes" in error for error in client.errors), client.errors
    assert client.names(since=exited) == {"frame-s2"}
    assert "drain" in stopping.output(), stopping.output()


def test_sigterm_with_drain_grace_loses_no_request(deployment: Deployment) -> None:
    """SIGTERM alone, with ``--drain-grace``: HAProxy marks the instance down first, nothing fails.

    For the grace the instance keeps listening and serving but answers PING with ERROR 5,
    so HAProxy's health check (``fall 2``, ``inter 200ms`` here) marks it DOWN and stops
    sending it connections before its listener closes: no connection is left in the
    accept queue to be reset (compare the previous test).
    """
    old = deployment.instances["frame", "s1"]
    old.popen.send_signal(signal.SIGTERM)
    old.popen.wait(timeout=30)
    deployment.stats.wait_status("frame", "s1", "DOWN", timeout=10)
    stopping = deployment.start("frame", "s1", "--drain-grace", "1.5")
    deployment.stats.wait_status("frame", "s1", "UP", timeout=15)
    with ClientLoop(deployment.frame_port) as client:
        client.wait(lambda: client.names() == {"frame-s1", "frame-s2"}, "both instances answer")
        stopping.popen.send_signal(signal.SIGTERM)
        deployment.stats.wait_status("frame", "s1", "DOWN", timeout=10)  # during the grace
        assert stopping.popen.poll() is None, stopping.output()  # marked down, still serving
        assert stopping.popen.wait(timeout=30) == -signal.SIGTERM, stopping.output()
        exited = time.monotonic()
        client.wait_answers(100, since=exited)
    assert client.errors == [], client.errors
    assert client.names(since=exited) == {"frame-s2"}
    assert "failing health checks" in stopping.output(), stopping.output()


def test_halfclose_through_haproxy(deployment: Deployment) -> None:
    """``nc -N`` half-closes through HAProxy (mode tcp forwards the FIN) and gets its answer."""
    nc = require_tool("nc")
    done = subprocess.run(
        [nc, "-N", "-s", CLIENT, "127.0.0.1", str(deployment.halfclose_port)],
        input=b"hello",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    host, _, name = parse(done.stdout)
    assert host == CLIENT, done.stdout
    assert name in ("halfclose-s1", "halfclose-s2"), done.stdout
    # the same with a socket: the port the handler sees is the client's own
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.bind((CLIENT, 0))
        s.connect(("127.0.0.1", deployment.halfclose_port))
        port = s.getsockname()[1]
        s.sendall(b"hello")
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    assert parse(answer)[:2] == (CLIENT, port), answer


def test_twisted_haproxy_endpoint_is_refused_pointing_to_proxy(short_dir: Path) -> None:
    """``--listen haproxy:tcp:PORT`` (Twisted's wrapper hides the half-close): a usage error."""
    port = free_port()
    done = run_twistd(
        "-n",
        "--pidfile=",
        "sockproto-halfclose",
        "--listen",
        f"haproxy:tcp:{port}:interface=127.0.0.1",
        "--handler",
        "peer",
        cwd=short_dir,
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert f"--listen proxy:tcp:{port}:interface=127.0.0.1" in output, output
    assert "Traceback" not in output, output

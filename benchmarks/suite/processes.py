"""Server and client processes: start, pin, measure (CPU, RSS), stop.

Servers run on the first CPU and load clients on the others when the machine has two
or more, so that a client never steals its server's CPU (other processes still can:
the load average is recorded with the results).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]


def _cpu_sets() -> tuple[set[int] | None, set[int] | None]:
    try:
        available = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None, None
    if len(available) < 2:
        return None, None
    return {available[0]}, set(available[1:])


SERVER_CPUS, CLIENT_CPUS = _cpu_sets()


def _pin(cpus: set[int] | None) -> Callable[[], None] | None:
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def _readline(stream: IO[bytes], timeout: float) -> bytes:
    """One line from a child's stdout, or ``b""`` if none comes within ``timeout`` seconds."""
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else b""


def _env() -> dict[str, str]:
    """Run children on this source tree (the sockproto under test), whatever is installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Server:
    """One peer's servers in a child process; ``ports`` maps each service to its port."""

    def __init__(
        self, peer: str, *, handler: str = "echo", services: str | None = None, lifetime: float = 900
    ):
        self.peer = peer
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop)
        argv = [sys.executable, "-m", "benchmarks.peers.serve", peer, "--handler", handler]
        argv += ["--lifetime", str(lifetime)]
        if services:
            argv += ["--services", services]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=ROOT,
            env=_env(),
            preexec_fn=_pin(SERVER_CPUS),  # sched_setaffinity only, before exec
        )
        self.ports: dict[str, int] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 60.0) -> Server:
        """Read the ports line (servers are started together, then waited for)."""
        assert self.proc.stdout is not None
        line = _readline(self.proc.stdout, timeout)
        if not line:
            error = self.stderr()
            self.stop()
            raise RuntimeError(f"the {self.peer} server did not start: {error}")
        self.ports = json.loads(line)
        return self

    def stderr(self) -> str:
        if self._stderr.closed:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-2000:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory(self) -> dict[str, int]:
        """Current and peak resident set size, in bytes (Linux ``VmRSS``, ``VmHWM``)."""
        values = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
        return {"rss": values["VmRSS"], "peak": values["VmHWM"]}

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def start_servers(peers: list[str], **options: Any) -> dict[str, Server]:
    """Start one server process per peer, in parallel, and wait until all listen."""
    servers = {peer: Server(peer, **options) for peer in peers}
    try:
        for server in servers.values():
            server.wait_ready()
    except BaseException:
        stop_servers(servers)
        raise
    return servers


def stop_servers(servers: dict[str, Server]) -> None:
    for server in servers.values():
        server.stop()


class FreshServers:
    """Hand out a fresh (never used) server per measurement, started ahead in batches.

    Starting a Python server takes a good part of a second; a batch of them starts in
    parallel while nothing is measured, and waits, idle, until its turn.

    :param batch: the keys of one batch, a key repeated once per server it needs.
    :param make: builds the (not yet ready) server of a key; by default the peer of
        that name with ``options``.
    """

    def __init__(self, batch: list[str], make: Callable[[str], Server] | None = None, **options: Any) -> None:
        self.batch = batch
        self.make = make or (lambda peer: Server(peer, **options))
        self.ready: dict[str, list[Server]] = {}

    def take(self, key: str) -> Server:
        if not self.ready.get(key):
            self._start_batch()
        return self.ready[key].pop(0)

    def _start_batch(self) -> None:
        started = [(key, self.make(key)) for key in self.batch]
        try:
            for _, server in started:
                server.wait_ready()
        except BaseException:
            for _, server in started:
                server.stop()
            raise
        for key, server in started:
            self.ready.setdefault(key, []).append(server)

    def close(self) -> None:
        for servers in self.ready.values():
            for server in servers:
                server.stop()
        self.ready.clear()


def run_client(args: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one load client (:mod:`benchmarks.suite.loadgen`) to completion; return its result."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.suite.loadgen", json.dumps(args)],
        capture_output=True,
        cwd=ROOT,
        env=_env(),
        timeout=timeout,
        preexec_fn=_pin(CLIENT_CPUS),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"load client {args['kind']} failed: {done.stderr.decode(errors='replace')[-1500:]}"
        )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


class IdleClient:
    """The ``idle`` load client: holds ``count`` connections open until :meth:`close`."""

    def __init__(self, port: int, count: int) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.suite.loadgen",
                json.dumps({"kind": "idle", "port": port, "count": count}),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=_env(),
            preexec_fn=_pin(CLIENT_CPUS),
        )

    def wait_ready(self, timeout: float) -> None:
        assert self.proc.stdout is not None
        line = _readline(self.proc.stdout, timeout)
        if not line:
            self.close()
            assert self.proc.stderr is not None
            raise RuntimeError(f"the idle client failed: {self.proc.stderr.read().decode()[-1500:]}")

    def close(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def run_python(module: str, args: list[str], timeout: float, *, cpus: set[int] | None = SERVER_CPUS) -> str:
    """Run ``python -m module args`` pinned to the server CPU; return its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(),
        timeout=timeout,
        preexec_fn=_pin(cpus),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} {args} failed: {done.stderr[-1500:]}")
    return done.stdout

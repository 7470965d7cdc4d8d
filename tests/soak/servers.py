"""The soak test's servers: installed ``twistd`` plugins in child processes, watched from /proc."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import statistics
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..helpers import BIN, free_port, wait_for_port

NOFILE = 8192
"""Open files wanted by the soak (500 client sockets here, as many in the servers)."""


def raise_nofile(wanted: int = NOFILE) -> int:
    """Raise this process's RLIMIT_NOFILE (children inherit it); return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def twistd_help(plugin: str) -> str:
    """What ``twistd PLUGIN --help`` prints (to see which options this version has)."""
    result = subprocess.run(
        [str(BIN / "twistd"), plugin, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    return result.stdout + result.stderr


@dataclass
class Server:
    """One ``twistd -n`` child: its port, log file and samples."""

    name: str
    plugin: str
    port: int
    udp: bool
    args: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, KiB)

    def start(self, cwd: Path) -> None:
        listen = (
            f"udp:{self.port}:interface=127.0.0.1" if self.udp else f"tcp:{self.port}:interface=127.0.0.1"
        )
        if not self.udp:
            listen += ":backlog=1024"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(BIN / "twistd"), "--pidfile=", "-n", self.plugin, "--listen", listen, *self.args],
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = 30.0) -> None:
        if not self.udp:
            wait_for_port(self.port, timeout=timeout)
            return
        ping = struct.pack(">2sBBII", b"SP", 1, 4, 1, 0)
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("127.0.0.1", self.port))
            s.settimeout(0.2)
            while True:
                try:
                    s.send(ping)
                    if s.recv(100) == struct.pack(">2sBBII", b"SP", 1, 5, 1, 0):
                        return
                except (TimeoutError, ConnectionRefusedError):
                    if time.monotonic() > deadline:
                        raise

    def fds(self) -> int:
        """File descriptors the server has open now."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError(f"no VmRSS for {self.name}")

    def stop(self) -> str:
        """SIGTERM, then wait (kill after 30 s); return the log."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.log.read_text(errors="replace")

    def settle_fds(self, baseline: int, timeout: float = 20.0) -> int:
        """Wait until the server is back to ``baseline`` descriptors (or ``timeout``); return the count."""
        deadline = time.monotonic() + timeout
        count = self.fds()
        while count != baseline and time.monotonic() < deadline:
            time.sleep(0.2)
            count = self.fds()
        return count


def make_servers(tmp: Path, specs: list[tuple[str, str, bool, list[str]]]) -> list[Server]:
    servers = []
    for name, plugin, udp, args in specs:
        port = free_port(kind=socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
        servers.append(Server(name, plugin, port, udp, args, tmp / f"{name}.log"))
    return servers


class Sampler(threading.Thread):
    """Sample every server's RSS once a second until stopped."""

    def __init__(self, servers: list[Server], interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.servers = servers
        self.interval = interval
        self.started_at = time.monotonic()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            now = time.monotonic() - self.started_at
            for server in self.servers:
                if server.alive():
                    with contextlib.suppress(OSError, AssertionError):  # it may be exiting
                        server.rss.append((now, server.rss_kib()))
            self.done.wait(self.interval)

    def stop(self) -> None:
        self.done.set()
        self.join(10)


@dataclass
class Flatness:
    """How a server's RSS moved after the warm-up."""

    warm: int  # KiB: the highest RSS in the window right after the warm-up
    end: int  # KiB: the highest RSS in the last window
    peak: int  # KiB: the highest RSS of the whole run
    median: int

    @property
    def growth(self) -> int:
        return self.end - self.warm


def flatness(samples: list[tuple[float, int]], warmup: float, window: float) -> Flatness:
    """Compare the RSS just after ``warmup`` seconds with the RSS of the last ``window`` seconds."""
    assert samples, "no RSS sample"
    last = samples[-1][0]
    after = [kib for t, kib in samples if warmup <= t < warmup + window] or [samples[0][1]]
    end = [kib for t, kib in samples if t >= last - window] or [samples[-1][1]]
    kib = [k for _, k in samples]
    return Flatness(max(after), max(end), max(kib), int(statistics.median(kib)))

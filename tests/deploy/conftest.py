"""Fixtures of the deployment tests: a real HAProxy in front of real sockproto instances."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..helpers import free_port, require_tool
from .haproxy import Process, Stats, start_haproxy, start_instance, stop

BACKENDS = ("frame", "halfclose")
SERVERS = ("s1", "s2")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (a UNIX socket path must fit in 108 bytes); removed after."""
    path = Path(tempfile.mkdtemp(prefix="spd-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Deployment:
    """HAProxy on loopback in front of two frame and two half-close instances."""

    frame_port: int
    halfclose_port: int
    ports: dict[tuple[str, str], int]  # (backend, server) -> its port
    directory: Path
    stats: Stats
    processes: list[Process] = field(default_factory=list)  # everything the fixture stops
    instances: dict[tuple[str, str], Process] = field(default_factory=dict)  # the running ones

    def start(self, backend: str, server: str, *extra: str) -> Process:
        """Start (or start again) the instance ``backend/server`` on its port, with ``extra`` options."""
        process = start_instance(
            self.directory,
            f"{backend}-{server}-{len(self.processes)}",
            backend,
            f"proxy:tcp:{self.ports[backend, server]}:interface=127.0.0.1",
            "--drain-timeout",
            "5",
            *extra,
            name=f"{backend}-{server}",
        )
        self.processes.append(process)
        self.instances[backend, server] = process
        return process


def stop_all(processes: list[Process]) -> None:
    """Stop every process (even if one fails to), then fail on a traceback in any output."""
    problems = []
    for process in processes:
        try:
            stop(process)
        except AssertionError as e:
            problems.append(str(e))
    for process in processes:
        if "Traceback" in process.output():
            problems.append(f"{process.name} logged a traceback:\n{process.output()}")
    assert not problems, "\n".join(problems)


@pytest.fixture
def deployment(short_dir: Path) -> Iterator[Deployment]:
    """``docs/deploy/haproxy.cfg`` run by HAProxy on loopback, every server UP before the test.

    The instances listen on ``proxy:tcp:PORT:interface=127.0.0.1`` (the default
    ``--proxy-from`` is loopback, where HAProxy connects from) and answer
    ``deploy_handlers:whoami``: the client address they see and their name.
    """
    require_tool("haproxy")
    ports = {(backend, server): free_port() for backend in BACKENDS for server in SERVERS}
    frame_port, halfclose_port = free_port(), free_port()
    deployment = Deployment(frame_port, halfclose_port, ports, short_dir, Stats(short_dir / "haproxy.sock"))
    try:
        for backend, server in ports:
            deployment.start(backend, server)
        values = {
            "SOCKPROTO_HAPROXY_SOCKET": str(short_dir / "haproxy.sock"),
            "SOCKPROTO_CHECK_INTER": "200ms",
            "SOCKPROTO_FRAME_BIND": f"127.0.0.1:{frame_port}",
            "SOCKPROTO_HALFCLOSE_BIND": f"127.0.0.1:{halfclose_port}",
        }
        for (backend, server), port in ports.items():
            values[f"SOCKPROTO_{backend.upper()}_{server.upper()}"] = f"127.0.0.1:{port}"
        haproxy = start_haproxy(short_dir, values)
        deployment.processes.append(haproxy)
        stats = deployment.stats
        for backend, server in ports:
            try:
                stats.wait_status(backend, server, "UP", timeout=30)
            except AssertionError as e:
                raise AssertionError(
                    f"{e}\n{deployment.instances[backend, server].output()}\n{haproxy.output()}"
                ) from None
        yield deployment
    finally:
        stop_all(deployment.processes)

"""HAProxy and sockproto on separate hosts: network namespaces on a veth bridge.

Client (10.213.0.10), balancer (10.213.0.2) and two instance hosts (10.213.0.11 and .12),
each a namespace this test creates, on a bridge in a namespace of its own: nothing is
added to the host's network.  HAProxy runs ``docs/deploy/haproxy.cfg`` in the balancer's
namespace; the instances listen on ``proxy:tcp:`` and take headers only from the
balancer (``--proxy-from 10.213.0.2``).

Skipped, saying why, where namespaces are unavailable (not root, no ``ip netns``);
under CI (``CI`` or ``SOCKPROTO_REQUIRE_TOOLS`` set) that is a failure instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..helpers import require_tool
from . import netns
from .conftest import stop_all
from .haproxy import Process, Stats, start_haproxy, start_instance

pytestmark = pytest.mark.timeout(120)

HOSTS = {"client": "10.213.0.10", "lb": "10.213.0.2", "s1": "10.213.0.11", "s2": "10.213.0.12"}
FRAME, HALFCLOSE = 8750, 8752
CLIENT_SCRIPT = Path(__file__).resolve().parent / "client.py"


@dataclass
class Site:
    topology: netns.Topology
    stats: Stats
    instances: dict[tuple[str, str], Process] = field(default_factory=dict)

    def run(
        self, host: str, *argv: str, stdin: bytes = b"", timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*self.topology.prefix(host), *argv],
            input=stdin,
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def frame_requests(self, count: int) -> list[dict[str, str]]:
        """``count`` requests from the client namespace through the balancer, one connection each."""
        done = self.run("client", sys.executable, str(CLIENT_SCRIPT), HOSTS["lb"], str(FRAME), str(count))
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        lines = [json.loads(line) for line in done.stdout.splitlines()]
        assert len(lines) == count, done.stdout
        return lines


def host_links() -> set[str]:
    """The host's own network interfaces (the test must not add any)."""
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=30, check=True)
    return {line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()}


@pytest.fixture
def site(short_dir: Path) -> Iterator[Site]:
    """The namespaces, HAProxy in ``lb``, a frame and a half-close instance in ``s1`` and in ``s2``."""
    netns.require()
    require_tool("haproxy")
    links = host_links()
    with netns.bridged(HOSTS) as topology:
        assert host_links() == links, "the topology touched the host's interfaces"
        processes: list[Process] = []
        try:
            site = Site(topology, Stats(short_dir / "haproxy.sock"))
            for server in ("s1", "s2"):
                for service, port in (("frame", FRAME), ("halfclose", HALFCLOSE)):
                    process = start_instance(
                        short_dir,
                        f"{service}-{server}",
                        service,
                        f"proxy:tcp:{port}:interface={HOSTS[server]}",
                        "--proxy-from",
                        HOSTS["lb"],
                        "--drain-timeout",
                        "2",
                        prefix=topology.prefix(server),
                    )
                    processes.append(process)
                    site.instances[service, server] = process
            haproxy = start_haproxy(
                short_dir,
                {
                    "SOCKPROTO_HAPROXY_SOCKET": site.stats.path,
                    "SOCKPROTO_CHECK_INTER": "200ms",
                    "SOCKPROTO_FRAME_BIND": f"{HOSTS['lb']}:{FRAME}",
                    "SOCKPROTO_FRAME_S1": f"{HOSTS['s1']}:{FRAME}",
                    "SOCKPROTO_FRAME_S2": f"{HOSTS['s2']}:{FRAME}",
                    "SOCKPROTO_HALFCLOSE_BIND": f"{HOSTS['lb']}:{HALFCLOSE}",
                    "SOCKPROTO_HALFCLOSE_S1": f"{HOSTS['s1']}:{HALFCLOSE}",
                    "SOCKPROTO_HALFCLOSE_S2": f"{HOSTS['s2']}:{HALFCLOSE}",
                },
                prefix=topology.prefix("lb"),
            )
            processes.append(haproxy)
            for backend, server in site.instances:
                try:
                    site.stats.wait_status(backend, server, "UP", timeout=30)
                except AssertionError as e:
                    raise AssertionError(
                        f"{e}\n{site.instances[backend, server].output()}\n{haproxy.output()}"
                    ) from None
            yield site
        finally:
            stop_all(processes)  # before the namespaces go: they are removed on leaving the with
    assert host_links() == links


def test_the_handler_sees_the_client_namespace(site: Site) -> None:
    lines = site.frame_requests(8)
    assert all("ok" in line for line in lines), lines
    hosts = {line["ok"].split()[0].rpartition(":")[0] for line in lines}
    assert hosts == {HOSTS["client"]}
    assert {line["ok"].split()[1] for line in lines} == {"frame-s1", "frame-s2"}


def test_halfclose_across_namespaces(site: Site) -> None:
    nc = require_tool("nc")
    done = site.run("client", nc, "-N", HOSTS["lb"], str(HALFCLOSE), stdin=b"hello", timeout=30)
    assert done.returncode == 0, done.stderr
    address, name = done.stdout.decode().split()
    assert address.rpartition(":")[0] == HOSTS["client"]
    assert name in ("halfclose-s1", "halfclose-s2")


def test_a_stopped_instance_is_marked_down_and_the_traffic_continues(site: Site) -> None:
    """``kill -STOP`` of s1: its kernel still accepts, but no PONG comes: the check times out."""
    frozen = site.instances["frame", "s1"]
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        took = site.stats.wait_status("frame", "s1", "DOWN", timeout=20)
        row = site.stats.show_stat()["frame", "s1"]
        assert row["check_status"] == "L7TOUT", row
        lines = site.frame_requests(20)
        assert all("ok" in line for line in lines), lines
        assert {line["ok"].split()[1] for line in lines} == {"frame-s2"}
        assert {line["ok"].split()[0].rpartition(":")[0] for line in lines} == {HOSTS["client"]}
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    assert took < 10
    site.stats.wait_status("frame", "s1", "UP", timeout=20)  # back once it answers again
    names = {line["ok"].split()[1] for line in site.frame_requests(8) if "ok" in line}
    assert names == {"frame-s1", "frame-s2"}

"""Network namespaces on a veth bridge, made by a test and removed by it.

Everything lives in namespaces the test creates: the bridge too sits in a namespace of
its own, each host is a namespace whose ``eth0`` is one end of a veth pair whose other
end is a port of that bridge.  Nothing is added to the host's network (no interface,
no route, no address).  Removing the namespaces removes the veths and the bridge with
them.  The namespaces are named ``spdPID-...`` after the test process, so a run killed
before its cleanup leaves names the next run recognises (their creator is gone) and
removes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

_NAME = re.compile(r"spd(\d+)-\S+")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def unavailable() -> str | None:
    """Why namespaces cannot be used here, or ``None`` if they can."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (the tests create namespaces, veths and a bridge)"
    probe = f"spd{os.getpid()}-probe-{uuid.uuid4().hex[:6]}"
    done = _ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"'ip netns add' fails here: {done.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def require() -> None:
    """Skip the test, printing why, where namespaces are unavailable; fail instead under CI."""
    reason = unavailable()
    if reason is None:
        return
    if os.environ.get("CI") or os.environ.get("SOCKPROTO_REQUIRE_TOOLS"):
        pytest.fail(f"network namespace tests must run under CI: {reason}")
    print(f"skipping the network namespace tests: {reason}")
    pytest.skip(reason)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    return True


def remove_stale() -> None:
    """Delete namespaces left by test runs that were killed before their cleanup."""
    for line in _ip("netns", "list").stdout.splitlines():
        match = _NAME.match(line.split()[0]) if line.strip() else None
        if match and not _alive(int(match.group(1))):
            _ip("netns", "del", line.split()[0], check=False)


@dataclass(frozen=True)
class Topology:
    """The namespaces of one test: ``namespaces[host]``, ``addresses[host]``."""

    namespaces: Mapping[str, str]
    addresses: Mapping[str, str]

    def prefix(self, host: str) -> list[str]:
        """The argv prefix running a command in ``host``'s namespace."""
        return ["ip", "netns", "exec", self.namespaces[host]]


@contextmanager
def bridged(hosts: Mapping[str, str], prefix_length: int = 24) -> Iterator[Topology]:
    """Namespaces ``hosts`` (name to address) on one bridge; all removed on exit, even on failure.

    Host names are short (they name veth ends: at most 15 characters with ``v-``).
    """
    remove_stale()
    tag = f"spd{os.getpid()}-{uuid.uuid4().hex[:4]}"
    bridge = f"{tag}-br"
    namespaces = {host: f"{tag}-{host}" for host in hosts}
    created: list[str] = []
    try:
        for name in (bridge, *namespaces.values()):
            _ip("netns", "add", name)
            created.append(name)
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge, "link", "set", "br0", "up")
        for host, address in hosts.items():
            namespace, port = namespaces[host], f"v-{host}"
            _ip("-n", bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            _ip("-n", bridge, "link", "set", port, "master", "br0", "up")
            _ip("-n", namespace, "addr", "add", f"{address}/{prefix_length}", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
        yield Topology(namespaces, dict(hosts))
    finally:
        for name in reversed(created):
            _ip("netns", "del", name, check=False)


def namespace_exists(name: str) -> bool:
    return any(line.split()[0] == name for line in _ip("netns", "list").stdout.splitlines() if line.strip())

"""Half-close peers for the loopback tests: where a server listens, and clients nobody here wrote."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.task import deferLater

from ..helpers import listen, require_tool

FAMILIES = ["tcp", "tcp6", "unix"]


@dataclass
class Target:
    """One listening half-close server, addressed the way each kind of client wants."""

    family: int
    address: Any  # for socket.connect
    endpoint: str  # a Twisted client endpoint string
    nc: list[str]  # nc's arguments after its options
    socat: str  # socat's address


def ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


async def serve(factory: Any, family: str, tmp_path: Path) -> tuple[Any, Target]:
    """Listen with ``factory`` on loopback (``tcp``, ``tcp6``) or a UNIX socket in ``tmp_path``."""
    if family == "tcp":
        port = await listen(factory, "tcp:0:interface=127.0.0.1")
        n = port.getHost().port
        target = Target(
            socket.AF_INET, ("127.0.0.1", n), f"tcp:host=127.0.0.1:port={n}", ["127.0.0.1", str(n)],
            f"TCP4:127.0.0.1:{n}",
        )  # fmt: skip
    elif family == "tcp6":
        if not ipv6_available():
            pytest.skip("no IPv6 loopback")
        port = await listen(factory, r"tcp6:0:interface=\:\:1")
        n = port.getHost().port
        target = Target(
            socket.AF_INET6, ("::1", n), rf"tcp:host=\:\:1:port={n}", ["-6", "::1", str(n)],
            f"TCP6:[::1]:{n}",
        )  # fmt: skip
    else:
        path = tmp_path / "hc.sock"
        port = await listen(factory, f"unix:{path}")
        target = Target(
            socket.AF_UNIX, str(path), f"unix:path={path}", ["-U", str(path)], f"UNIX-CONNECT:{path}"
        )
    return port, target


def talk(target: Target, payload: bytes, *, timeout: float = 15.0) -> bytes:
    """The talk's client: ``sendall``, ``shutdown(SHUT_WR)``, read the answer to EOF."""
    with socket.socket(target.family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(target.address)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        with s.makefile("rb") as f:
            return f.read()


def outcome(target: Target, payload: bytes, *, half_close: bool = True, timeout: float = 15.0) -> Any:
    """Like :func:`talk`, but return the exception instead of raising it."""
    with socket.socket(target.family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(target.address)
        try:
            s.sendall(payload)
            if half_close:
                with contextlib.suppress(OSError):  # ENOTCONN: the reset came first; recv reports it
                    s.shutdown(socket.SHUT_WR)
            with s.makefile("rb") as f:
                return f.read()
        except OSError as e:
            return e


def run_tool(argv: list[str], payload: bytes, timeout: float = 30.0) -> bytes:
    """Run a third-party client with ``payload`` on stdin; return its stdout."""
    done = subprocess.run(argv, input=payload, capture_output=True, timeout=timeout, check=False)
    assert done.returncode == 0, (argv, done.returncode, done.stderr)
    return done.stdout


def nc_argv(target: Target) -> list[str]:
    """``nc -N``: netcat-openbsd shuts down its write side at EOF on stdin."""
    return [require_tool("nc"), "-N", "-w", "20", *target.nc]


def socat_argv(target: Target) -> list[str]:
    """socat passes stdin's EOF on as a half-close and waits (``-t``) for the answer."""
    return [require_tool("socat"), "-t", "20", "-", target.socat]


async def until(predicate: Any, timeout: float = 10.0) -> None:
    """Wait (reactor running) until ``predicate()`` is true."""
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("condition not reached in time")

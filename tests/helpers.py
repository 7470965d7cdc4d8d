"""Helpers shared by the loopback tests: listening, processes, third-party tools."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def require_tool(name: str) -> str:
    """Return the path of command ``name``; skip if missing, fail under CI.

    ``.ci/run`` installs the third-party peers and sets ``SOCKPROTO_REQUIRE_TOOLS``, so
    there a missing tool is an error, not a silent skip.
    """
    path = shutil.which(name)
    if path is None:
        if os.environ.get("SOCKPROTO_REQUIRE_TOOLS"):
            pytest.fail(f"{name} is required (install it, as .ci/run does)")
        pytest.skip(f"{name} is not installed")
    return path


async def listen(factory: Any, endpoint: str = "tcp:0:interface=127.0.0.1") -> Any:
    """Listen with ``factory`` on a stream endpoint string; return the port."""
    return await serverFromString(reactor, endpoint).listen(factory)


def free_port(family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> int:
    """Return a port number that was free a moment ago on loopback."""
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 15.0) -> None:
    """Block until a TCP connection to ``host:port`` succeeds, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def twistd(*args: str, cwd: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start the installed ``twistd -n`` (outside the source tree, as users run it)."""
    return subprocess.Popen(
        [str(BIN / "twistd"), "--pidfile=", "-n", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        **kwargs,
    )


def run_twistd(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the installed ``twistd`` to completion (``--help``, a usage error...)."""
    return subprocess.run(
        [str(BIN / "twistd"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        check=False,
    )


# What systemd does: the socket as fd 3, LISTEN_PID = the pid that execs the server.
_SOCKET_ACTIVATE = (
    "import os, sys\n"
    "os.dup2(int(sys.argv[1]), 3)\n"
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='frame')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def socket_activated_twistd(*args: str, cwd: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start the installed ``twistd -n`` on a loopback TCP socket handed over as systemd
    does (fd 3, ``LISTEN_FDS``, ``LISTEN_PID``); return the process and the port."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    fd = listener.fileno()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SOCKET_ACTIVATE, str(fd), str(BIN / "twistd"), "--pidfile=", "-n", *args],
            cwd=cwd,
            pass_fds=(fd,),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        )
    finally:
        listener.close()
    return proc, port

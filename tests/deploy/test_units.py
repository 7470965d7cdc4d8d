"""The systemd units of ``docs/deploy``: they parse, and their command serves a socket systemd hands over.

``systemd-analyze verify`` checks the unit files (on copies whose only change is the
install path of twistd, ``/opt/sockproto/bin``, replaced by this environment's: verify
insists that the command exists).  Then the service's ``ExecStart``, as written, is run
under ``systemd-socket-activate`` listening where the ``.socket`` unit says (its ``%i``
a free port), as systemd would run it: a ``proxy:systemd:`` listener with two workers,
stopped by SIGTERM to the main process alone (``KillMode=mixed``).
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..helpers import BIN, free_port, require_tool
from .haproxy import DOCS, spawn, stop

pytestmark = pytest.mark.timeout(120)

SERVICE = DOCS / "sockproto-frame@.service"
SOCKET = DOCS / "sockproto-frame@.socket"
INSTALLED = "/opt/sockproto/bin/"


def directives(path: Path) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file (continuation lines joined), each key's values in order."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


def test_units_verify(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    for unit in (SERVICE, SOCKET):
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED, f"{BIN}/"))
    done = subprocess.run(
        [analyze, "verify", "sockproto-frame@8761.service", "sockproto-frame@8761.socket"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_stop_timeout_is_above_the_drain() -> None:
    """``TimeoutStopSec`` leaves the workers their drain and the 15 s their parent waits beyond it."""
    service = directives(SERVICE)
    assert service["KillMode"] == ["mixed"]
    command = shlex.split(service["ExecStart"][0])
    drain = float(command[command.index("--drain-timeout") + 1])
    assert seconds(service["TimeoutStopSec"][0]) > drain + 15


def test_the_service_command_serves_the_socket_systemd_hands_over(short_dir: Path) -> None:
    activate = require_tool("systemd-socket-activate")
    port = free_port()
    listen = directives(SOCKET)["ListenStream"][0].replace("%i", str(port))
    command = shlex.split(directives(SERVICE)["ExecStart"][0])
    assert command[0].startswith(INSTALLED)
    command[0] = str(BIN / command[0][len(INSTALLED) :])
    # systemd names each socket (LISTEN_FDNAMES), and Twisted's systemd: endpoint needs the name
    process = spawn(
        "activated",
        [activate, f"--fdname=sockproto-frame@{port}.socket", "-l", listen, *command],
        short_dir,
        {"PATH": "/usr/bin:/bin"},
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # the first connection starts twistd (socket activation), the next ones wait for it
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "sockproto",
                    "frame",
                    listen,
                    "--proxy-v2",
                    "192.0.2.7:4444",
                    "--data",
                    "hi",
                    "--count",
                    "3",
                    "--timeout",
                    "10",
                ],
                capture_output=True,
                timeout=30,
                check=False,
            )
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert (done.returncode, done.stdout) == (0, b"hi" * 3), (done.stderr, process.output())
        without_header = subprocess.run(
            [sys.executable, "-m", "sockproto", "frame", listen, "--data", "hi", "--timeout", "10"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert without_header.returncode != 0 and without_header.stdout == b""
    finally:
        code = stop(process, signal.SIGTERM, timeout=60)  # KillMode=mixed: the main process alone
    output = process.output()
    assert code == -signal.SIGTERM, output
    assert "Traceback" not in output, output
    assert "worker 1" in output and "worker 2" in output, output

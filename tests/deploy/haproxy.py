"""Run the real HAProxy of ``docs/deploy/haproxy.cfg`` and real sockproto instances behind it.

The configuration is the documentation's file itself: its addresses are HAProxy
environment variables (``"${SOCKPROTO_FRAME_S1}"``), which the documentation sets in
``docs/deploy/haproxy.env`` and a test sets to its own ports.  :func:`config_variables`
and :func:`documented_environment` let a test check that the two files agree.

HAProxy and each twistd write their output to a file of the test's temporary directory
(never to an unread pipe, which would block them once full); :func:`stop` gathers it.
"""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..helpers import BIN, ROOT

DOCS = ROOT / "docs" / "deploy"
CONFIG = DOCS / "haproxy.cfg"
ENVIRONMENT = DOCS / "haproxy.env"
HANDLERS = Path(__file__).resolve().parent / "pythonpath"
HANDLER = "deploy_handlers:whoami"

_VARIABLE = re.compile(r"\$\{(\w+)\}")


def config_variables(path: Path = CONFIG) -> set[str]:
    """The environment variables a configuration file reads."""
    return set(_VARIABLE.findall(path.read_text()))


def documented_environment(path: Path = ENVIRONMENT) -> dict[str, str]:
    """The ``NAME=value`` lines of the documentation's environment file."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


@dataclass
class Process:
    """A started process, its output file, and how to stop it."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    stopped: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def spawn(
    name: str, argv: Sequence[str], directory: Path, env: Mapping[str, str], prefix: Sequence[str] = ()
) -> Process:
    """Start ``prefix + argv`` (``prefix``: ``ip netns exec NS``), output to ``directory/NAME.log``."""
    log = directory / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [*prefix, *argv],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
        )
    return Process(name, popen, log)


def stop(process: Process, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    """Wake it (``SIGCONT``, in case a test stopped it), signal it, wait; kill it if it lingers."""
    popen = process.popen
    if popen.poll() is None:
        for sig in (signal.SIGCONT, signum):
            try:
                popen.send_signal(sig)
            except ProcessLookupError:  # pragma: no cover - it just ended
                break
    try:
        return popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(timeout=10)
        raise AssertionError(
            f"{process.name} still ran {timeout} s after signal {signum}:\n{process.output()}"
        ) from None


def start_haproxy(directory: Path, values: Mapping[str, str], prefix: Sequence[str] = ()) -> Process:
    """``haproxy -db -f docs/deploy/haproxy.cfg`` with ``values`` as its environment variables.

    ``values`` must name exactly the variables the configuration reads.
    """
    wanted = config_variables()
    assert set(values) == wanted, f"the test sets {sorted(values)}, the configuration reads {sorted(wanted)}"
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **values}
    return spawn("haproxy", ["haproxy", "-db", "-f", str(CONFIG)], directory, env, prefix)


def start_instance(
    directory: Path,
    log: str,
    service: str,
    listen: str,
    *args: str,
    name: str | None = None,
    prefix: Sequence[str] = (),
) -> Process:
    """``twistd -n sockproto-SERVICE --listen LISTEN --handler deploy_handlers:whoami ARGS``.

    The installed twistd (``make install``), run as users run it: the source tree is not
    on its path, only the handler's directory.  Its output goes to ``LOG.log``; the
    handler answers ``name`` (default: ``log``).
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(HANDLERS), SOCKPROTO_INSTANCE=name or log)
    argv = [
        str(BIN / "twistd"),
        "--pidfile=",
        "-n",
        f"sockproto-{service}",
        "--listen",
        listen,
        "--handler",
        HANDLER,
        *args,
    ]
    return spawn(log, argv, directory, env, prefix)


class Stats:
    """HAProxy's runtime API on its ``stats socket`` (a path: reachable from any network namespace)."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)

    def command(self, line: str, timeout: float = 5.0) -> str:
        """Send one command, return HAProxy's whole answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.path)
            s.sendall(line.encode() + b"\n")
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        return answer.decode()

    def show_stat(self) -> dict[tuple[str, str], dict[str, str]]:
        """``show stat``: one row per (proxy, server), by CSV column name (``status``, ``scur``...)."""
        text = self.command("show stat").lstrip("# ")
        return {(row["pxname"], row["svname"]): row for row in csv.DictReader(io.StringIO(text))}

    def status(self, backend: str, server: str) -> str:
        return self.show_stat()[backend, server]["status"]

    def wait_status(self, backend: str, server: str, want: str, timeout: float = 20.0) -> float:
        """Wait until ``backend/server`` has status ``want`` (``UP``, ``DOWN``...); the seconds it took."""
        start = time.monotonic()
        while True:
            try:
                status = self.status(backend, server)
            except OSError:  # the socket is not there yet
                status = "(no stats socket)"
            if status == want:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise AssertionError(f"{backend}/{server} is {status!r}, not {want!r}, after {timeout} s")
            time.sleep(0.05)

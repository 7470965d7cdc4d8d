"""Run the real ``sockproto`` command in a subprocess while the test's reactor serves."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from ..helpers import ROOT


@dataclass
class Result:
    code: int | None
    out: bytes
    err: str
    signal: int | None = None

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


class _Collect(ProcessProtocol):
    def __init__(self, stdin: bytes, done: Deferred[Result], close_stdout_after: int | None = None) -> None:
        self.stdin = stdin
        self.done = done
        self.out = bytearray()
        self.err = bytearray()
        self.close_stdout_after = close_stdout_after

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self.stdin:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if self.close_stdout_after is not None and len(self.out) >= self.close_stdout_after:
            assert self.transport is not None
            self.transport.closeStdout()  # as `| head -c N` does
            self.close_stdout_after = None

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        value: Any = reason.value
        code = value.exitCode if isinstance(value, (ProcessDone, ProcessTerminated)) else None
        signal = getattr(value, "signal", None)
        self.done.callback(Result(code, bytes(self.out), self.err.decode(errors="replace"), signal))


def cli_env() -> dict[str, str]:
    """The environment of the subprocess: the source tree first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def spawn(
    *args: str, stdin: bytes = b"", cwd: Path | None = None, close_stdout_after: int | None = None
) -> tuple[Deferred[Result], Any]:
    """Start ``python -m sockproto ARGS``; return its result Deferred and its process transport.

    :param close_stdout_after: stop reading the command's stdout after this many bytes.
    """
    done: Deferred[Result] = Deferred()
    process = reactor.spawnProcess(  # type: ignore[attr-defined]
        _Collect(stdin, done, close_stdout_after),
        sys.executable,
        [sys.executable, "-m", "sockproto", *args],
        env=cli_env(),
        path=str(cwd or ROOT),
    )
    return done, process


async def sockproto(
    *args: str, stdin: bytes = b"", timeout: float = 30.0, close_stdout_after: int | None = None
) -> Result:
    """Run ``python -m sockproto ARGS`` to completion (killed after ``timeout`` seconds)."""
    done, process = spawn(*args, stdin=stdin, close_stdout_after=close_stdout_after)
    killer = reactor.callLater(timeout, process.signalProcess, "KILL")  # type: ignore[attr-defined]
    try:
        result = await done
    finally:
        if killer.active():
            killer.cancel()
    assert result.signal is None, f"sockproto {' '.join(args)} was killed after {timeout} s: {result.err}"
    assert "Traceback" not in result.err, result.err
    return result

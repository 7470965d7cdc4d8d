"""The scripts of docs/examples run as the docs say: server, client, the CLI, the trial test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..helpers import ROOT

EXAMPLES = ROOT / "docs" / "examples"


def env() -> dict[str, str]:
    paths = [str(ROOT), str(EXAMPLES), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def run(*args: str, cwd: Path = EXAMPLES, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def shout_server() -> Iterator[dict[str, int]]:
    """``shout_server.py 0 0 0`` running; yields the ports it printed."""
    proc = subprocess.Popen(
        [sys.executable, "shout_server.py", "0", "0", "0"],
        cwd=EXAMPLES,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once every port listens
        assert line, proc.stderr.read() if proc.stderr else ""
        yield {name: int(port) for name, port in (item.split("=") for item in line.split())}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            raise
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


def test_client_against_server(shout_server: dict[str, int]) -> None:
    ports = shout_server
    done = run("shout_client.py", str(ports["frame"]), str(ports["datagram"]), str(ports["halfclose"]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "frame: HELLO! FRAMES!",
        "frame: refused with ERROR 4: handler failed: ValueError: nothing to shout",
        "datagram: HELLO DATAGRAMS!",
        "halfclose: HELLO HALF-CLOSE!",
    ]


def test_cli_against_server(shout_server: dict[str, int]) -> None:
    ports = shout_server
    for command, port in (
        ("frame", ports["frame"]),
        ("datagram", ports["datagram"]),
        ("halfclose", ports["halfclose"]),
    ):
        done = run("-m", "sockproto", command, f"127.0.0.1:{port}", "--data", "hello", cwd=ROOT)
        assert (done.returncode, done.stdout, done.stderr) == (0, "HELLO!", ""), command
    done = run("-m", "sockproto", "frame", f"127.0.0.1:{ports['frame']}", "--data", "", cwd=ROOT)
    assert done.returncode == 1
    assert (
        done.stderr
        == "sockproto frame: server error 4 (HANDLER_FAILED): handler failed: ValueError: nothing to shout\n"
    )


def test_trial_example_passes(tmp_path: Path) -> None:
    done = run("-m", "twisted.trial", "--temp-directory", str(tmp_path / "_trial_temp"), "test_shout")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASSED (successes=4)" in done.stdout

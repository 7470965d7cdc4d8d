"""Streamed half-close requests through a real ``twistd -n sockproto-halfclose --max-request none``.

A 2 GiB body through ``nc -N`` (once: the suite's big test), and smaller ones through
the ``sockproto halfclose`` command from a file and from a pipe; every digest checked
against one computed here, and the server's peak RSS (``VmHWM``) compared with its
idle RSS.  The figures themselves are the benchmark's (``benchmarks/bench_streaming.py``).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..helpers import BIN, free_port, require_tool, twistd, wait_for_port

GiB = 1024**3
MiB = 1024**2
RSS_BOUND = 64 * MiB  # the bound on the server's growth, whatever the body size


def memory(pid: int, field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of process ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def pattern_blocks(total: int, block: int = MiB) -> Iterator[bytes]:
    """``total`` bytes of a non-trivial pattern: each MiB differs (its index in its first bytes)."""
    base = bytearray(hashlib.sha256(b"sockproto").digest() * (block // 32))
    for i in range(total // block):
        base[:8] = i.to_bytes(8, "big")
        yield bytes(base)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """The plugin streaming sha256 with no request limit; yields (port, pid)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to read the server's memory")
    port = free_port()
    process = twistd(
        "sockproto-halfclose", "--listen", f"tcp:{port}:interface=127.0.0.1",
        "--handler", "sha256", "--max-request", "none", "--request-timeout", "120",
        cwd=tmp_path,
    )  # fmt: skip
    try:
        wait_for_port(port)
        yield port, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        assert b"sockproto-halfclose listening on" in output, output


def feed(process: subprocess.Popen[bytes], total: int, digest: Any) -> None:
    """Write the pattern to ``process``'s stdin, hashing it on the way; close stdin."""
    assert process.stdin is not None
    for block in pattern_blocks(total):
        digest.update(block)
        process.stdin.write(block)
    process.stdin.close()


def through(argv: list[str], total: int, cwd: Path) -> tuple[bytes, bytes]:
    """Pipe ``total`` pattern bytes into ``argv``; return (its stdout, the expected answer)."""
    digest = hashlib.sha256()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=cwd, env=env)
    writer = threading.Thread(target=feed, args=(process, total, digest))
    writer.start()
    assert process.stdout is not None
    out = process.stdout.read()
    writer.join(timeout=120)
    assert process.wait(timeout=60) == 0, argv
    return out, digest.hexdigest().encode() + b"\n"


def test_two_gib_through_nc_in_bounded_memory(server: tuple[int, int], tmp_path: Path) -> None:
    port, pid = server
    idle = memory(pid, "VmRSS")
    out, expected = through([require_tool("nc"), "-N", "127.0.0.1", str(port)], 2 * GiB, tmp_path)
    assert out == expected
    grown = memory(pid, "VmHWM") - idle
    assert grown < RSS_BOUND, f"the server grew by {grown / MiB:.1f} MiB for a 2 GiB body"


def test_sockproto_command_streams_stdin_and_file(server: tuple[int, int], tmp_path: Path) -> None:
    port, pid = server
    idle = memory(pid, "VmRSS")
    command = [str(BIN / "python"), "-m", "sockproto", "halfclose", f"127.0.0.1:{port}", "--timeout", "60"]
    out, expected = through(command, 256 * MiB, tmp_path)  # a pipe: never read whole
    assert out == expected
    big = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with big.open("wb") as f:
        for block in pattern_blocks(64 * MiB):
            digest.update(block)
            f.write(block)
    done = subprocess.run(
        [*command, "--file", str(big)], capture_output=True, timeout=60, cwd=tmp_path, check=False,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == digest.hexdigest().encode() + b"\n"
    assert memory(pid, "VmHWM") - idle < RSS_BOUND

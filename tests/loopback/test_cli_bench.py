"""``sockproto bench`` for real, against each service over loopback; ``--json`` parsed."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from sockproto import FrameServerFactory
from sockproto.datagram.endpoints import udp_server_from_string
from sockproto.datagram.server import DatagramServerFactory
from sockproto.halfclose.server import HalfCloseServerFactory
from sockproto.handlers import echo
from sockproto.request import Request

from ..helpers import BIN, ROOT, free_port, listen
from .cli_run import cli_env, sockproto

LATENCIES = {"p50", "p90", "p99", "max"}


def check_summary(summary: dict[str, object], service: str, requests: int) -> None:
    assert summary["service"] == service
    assert summary["requests"] == summary["answered"] == requests
    assert summary["server_errors"] == summary["no_answer"] == summary["not_sent"] == 0
    assert isinstance(summary["requests_per_s"], float) and summary["requests_per_s"] > 0
    assert isinstance(summary["mb_per_s"], float) and summary["mb_per_s"] > 0
    latency = summary["latency_ms"]
    assert isinstance(latency, dict) and set(latency) == LATENCIES
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("header", ["spf1", "int32"])
async def test_bench_frame_json(header: str) -> None:
    from sockproto.core import PRESETS

    port = await listen(FrameServerFactory(echo, header=PRESETS[header]))
    try:
        r = await sockproto(
            "bench", f"127.0.0.1:{port.getHost().port}", "--service", "frame", "--header", header,
            "--requests", "300", "--concurrency", "4", "--size", "1KiB", "--json",
        )  # fmt: skip
        assert r.code == 0, r.err
        assert r.err == ""  # stderr is not a terminal: no progress bar
        summary = json.loads(r.out)
        check_summary(summary, "frame", 300)
        assert (summary["concurrency"], summary["size"]) == (4, 1024)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("mode", ["spf1", "raw"])
async def test_bench_datagram_json(mode: str) -> None:
    port = await udp_server_from_string(reactor, "udp:0:interface=127.0.0.1").listen(
        DatagramServerFactory(echo, mode=mode)  # type: ignore[arg-type]
    )
    try:
        r = await sockproto(
            "bench", f"127.0.0.1:{port.getHost().port}", "--service", "datagram", "--header", mode,
            "--requests", "300", "--concurrency", "8", "--json",
        )  # fmt: skip
        assert r.code == 0, r.err
        check_summary(json.loads(r.out), "datagram", 300)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_bench_halfclose_json_and_text() -> None:
    port = await listen(HalfCloseServerFactory(echo))
    try:
        where = f"127.0.0.1:{port.getHost().port}"
        r = await sockproto("bench", where, "--service", "halfclose", "--requests", "100", "--json")
        assert r.code == 0, r.err
        check_summary(json.loads(r.out), "halfclose", 100)
        r = await sockproto("bench", where, "--service", "halfclose", "--requests", "20")
        assert r.code == 0, r.err
        text = r.out.decode()
        assert f"halfclose at {where}: 20 requests of 100 bytes, 8 concurrent" in text
        assert "requests/s" in text and "MB/s" in text
        assert "p50" in text and "p90" in text and "p99" in text and "max" in text
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_bench_server_errors_exit_1() -> None:
    def refuse(request: Request) -> bytes:
        raise RuntimeError("no")

    port = await listen(FrameServerFactory(refuse))
    try:
        r = await sockproto("bench", f"127.0.0.1:{port.getHost().port}", "--requests", "10", "--json")
        assert r.code == 1
        summary = json.loads(r.out)
        assert (summary["answered"], summary["server_errors"]) == (0, 10)
        assert "HANDLER_FAILED" in summary["first_error"]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("service", ["frame", "halfclose"])
async def test_bench_nothing_listening_exits_3(service: str) -> None:
    r = await sockproto("bench", f"127.0.0.1:{free_port()}", "--service", service, "--requests", "50")
    assert r.code == 3
    if service == "frame":  # connections are opened first: nothing measured, one line
        assert r.out == b""
        assert len(r.err_lines) == 1 and "could not connect" in r.err
    else:  # a connection per request: each worker fails once, the rest is not sent
        assert "could not connect" in r.out.decode()


def run_with_terminal_stderr(args: list[str]) -> tuple[int, bytes, bytes]:
    """Run the command with stderr on a pseudo-terminal and stdout on a pipe."""
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sockproto", *args],
            stdout=subprocess.PIPE,
            stderr=terminal,
            stdin=subprocess.DEVNULL,
            env=cli_env(),
            cwd=ROOT,
        )
        os.close(terminal)
        terminal = -1
        seen = bytearray()
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        out, _ = proc.communicate(timeout=60)
        return proc.returncode, out, bytes(seen)
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)


@pytest_twisted.ensureDeferred
async def test_progress_bar_only_when_stderr_is_a_terminal() -> None:
    port = await listen(FrameServerFactory(echo))
    try:
        args = ["bench", f"127.0.0.1:{port.getHost().port}", "--requests", "2000", "--json"]
        code, out, terminal = await deferToThread(run_with_terminal_stderr, args)
        assert code == 0, terminal
        assert json.loads(out)["answered"] == 2000  # the report is not mixed with the bar
        assert b"] 0/2000" in terminal or b"/2000" in terminal
        assert b"\r[" in terminal and terminal.endswith(b"\r\x1b[K")
    finally:
        await port.stopListening()


def test_installed_console_script(tmp_path: Path) -> None:
    """``make install`` puts the ``sockproto`` console script next to the venv's python."""
    script = BIN / "sockproto"
    if not script.exists():
        if os.environ.get("SOCKPROTO_REQUIRE_TOOLS"):
            pytest.fail(f"{script} is missing: the [project.scripts] entry was not installed")
        pytest.skip(f"{script} is not installed (run make install)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60
    )
    assert (done.returncode, done.stdout.split()[0]) == (0, "sockproto")
    done = subprocess.run(
        [str(script), "frame"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60
    )
    assert done.returncode == 2 and "required: ENDPOINT" in done.stderr


@pytest_twisted.ensureDeferred
async def test_bench_default_datagram_service_sees_no_drops() -> None:
    """Issue 12 item 1: the plugin's defaults (1000/s per source) do not throttle a loopback client."""
    from twisted.application.service import IServiceCollection

    from sockproto.tap.datagram import DEFAULT_RATE_LIMIT, Options, makeService

    options = Options()
    options.parseOptions(["--handler", "echo"])
    assert options["rate-limit"] == DEFAULT_RATE_LIMIT
    factory = next(iter(IServiceCollection(makeService(options)))).factory  # type: ignore[attr-defined]
    port = await udp_server_from_string(reactor, "udp:0:interface=127.0.0.1").listen(factory)
    try:
        r = await sockproto(
            "bench", f"127.0.0.1:{port.getHost().port}", "--service", "datagram",
            "--requests", "3000", "--concurrency", "32", "--json",
        )  # fmt: skip
        assert r.code == 0, r.err
        check_summary(json.loads(r.out), "datagram", 3000)
        assert factory.stats.dropped == 0, factory.stats
    finally:
        await port.stopListening()

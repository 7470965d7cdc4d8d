"""The half-close server against clients nobody here wrote, over TCP, TCP6 and UNIX sockets."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import Logger, LogLevel

from sockproto.halfclose.server import HalfCloseServerFactory, HalfCloseServerProtocol
from sockproto.handlers import echo, sha256
from sockproto.request import Request

from .halfclose_peers import FAMILIES, nc_argv, outcome, run_tool, serve, socat_argv, talk, until

PAYLOAD = os.urandom(300 * 1024)  # binary, several reads, under the 1 MiB default


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).hexdigest().encode() + b"\n"


@pytest.mark.parametrize("family", FAMILIES)
@pytest_twisted.ensureDeferred
async def test_talk_client(family: str, tmp_path: Path) -> None:
    factory = HalfCloseServerFactory(echo)
    port, target = await serve(factory, family, tmp_path)
    try:
        assert await deferToThread(talk, target, PAYLOAD) == PAYLOAD
        assert await deferToThread(talk, target, b"") == b""
        await until(lambda: not factory.connections)
    finally:
        await port.stopListening()


@pytest.mark.parametrize("family", FAMILIES)
@pytest_twisted.ensureDeferred
async def test_netcat(family: str, tmp_path: Path) -> None:
    port, target = await serve(HalfCloseServerFactory(sha256), family, tmp_path)
    try:
        assert await deferToThread(run_tool, nc_argv(target), PAYLOAD) == digest(PAYLOAD)
        assert await deferToThread(run_tool, nc_argv(target), b"line\n") == digest(b"line\n")
    finally:
        await port.stopListening()


@pytest.mark.parametrize("family", FAMILIES)
@pytest_twisted.ensureDeferred
async def test_socat(family: str, tmp_path: Path) -> None:
    port, target = await serve(HalfCloseServerFactory(echo), family, tmp_path)
    try:
        assert await deferToThread(run_tool, socat_argv(target), PAYLOAD) == PAYLOAD
    finally:
        await port.stopListening()


@pytest.mark.parametrize("family", FAMILIES)
@pytest_twisted.ensureDeferred
async def test_slow_async_handler_answer_reaches_every_client(family: str, tmp_path: Path) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    async def handler(request: Request) -> bytes:
        await deferLater(reactor, 0.2, lambda: None)
        return request.payload[::-1]

    port, target = await serve(HalfCloseServerFactory(handler), family, tmp_path)
    try:
        assert await deferToThread(talk, target, b"abc") == b"cba"
        assert await deferToThread(run_tool, nc_argv(target), b"xyz") == b"zyx"
        assert await deferToThread(run_tool, socat_argv(target), b"123") == b"321"
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_hundred_concurrent_clients(tmp_path: Path) -> None:
    """No answer is written before all 100 requests are in: the server serves them at once."""
    waiting: list[tuple[Request, Deferred[bytes]]] = []
    most_open = 0

    def handler(request: Request) -> Deferred[bytes]:
        nonlocal most_open
        d: Deferred[bytes] = Deferred()
        waiting.append((request, d))
        most_open = max(most_open, len(factory.connections))
        if len(waiting) == 100:
            for r, w in waiting:
                w.callback(digest(r.payload))
        return d

    factory = HalfCloseServerFactory(handler)
    port, target = await serve(factory, "tcp", tmp_path)
    payloads = [f"client {i}: ".encode() * (i + 1) for i in range(100)]

    def clients() -> list[bytes]:
        with ThreadPoolExecutor(max_workers=100) as pool:
            return list(pool.map(lambda p: talk(target, p, timeout=30), payloads))

    try:
        answers = await deferToThread(clients)
        assert answers == [digest(p) for p in payloads]
        assert most_open == 100
        await until(lambda: not factory.connections)
    finally:
        await port.stopListening()


# -- failures are resets, never empty answers ---------------------------------------------


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(HalfCloseServerProtocol, "_log", Logger(observer=events.append))
    return events


@pytest.mark.parametrize("family", ["tcp", "tcp6"])
@pytest_twisted.ensureDeferred
async def test_too_large_is_a_reset(family: str, tmp_path: Path, logged: list[dict[str, Any]]) -> None:
    factory = HalfCloseServerFactory(echo, max_request=1000)
    port, target = await serve(factory, family, tmp_path)
    try:
        assert await deferToThread(talk, target, b"x" * 1000) == b"x" * 1000
        for size in (1001, 64 * 1024, 4 * 1024 * 1024):
            assert isinstance(await deferToThread(outcome, target, b"x" * size), ConnectionResetError)
        # as soon as the limit is passed: no need to wait for the half-close (nor the timeout)
        started = time.monotonic()
        error = await deferToThread(outcome, target, b"x" * 1001, half_close=False, timeout=10)
        assert isinstance(error, ConnectionResetError)
        assert time.monotonic() - started < 5
        assert [e["limit"] for e in logged if e["log_level"] is LogLevel.warn] == [1000] * 4
    finally:
        await port.stopListening()


@pytest.mark.parametrize("family", ["tcp", "tcp6"])
@pytest_twisted.ensureDeferred
async def test_handler_failure_is_a_reset(family: str, tmp_path: Path, logged: list[dict[str, Any]]) -> None:
    async def handler(request: Request) -> bytes:
        if request.payload == b"async":
            raise LookupError("async failure")
        raise ValueError("sync failure")

    port, target = await serve(HalfCloseServerFactory(handler), family, tmp_path)
    try:
        for payload in (b"sync", b"async"):
            assert isinstance(await deferToThread(outcome, target, payload), ConnectionResetError)
        failures = [e["log_failure"] for e in logged if "log_failure" in e]
        assert [f.type for f in failures] == [ValueError, LookupError]
    finally:
        await port.stopListening()


@pytest.mark.parametrize("family", ["tcp", "tcp6"])
@pytest_twisted.ensureDeferred
async def test_request_timeout_is_a_reset(family: str, tmp_path: Path, logged: list[dict[str, Any]]) -> None:
    factory = HalfCloseServerFactory(echo, request_timeout=0.3)
    port, target = await serve(factory, family, tmp_path)
    try:
        for partial in (b"", b"half a requ"):
            started = time.monotonic()
            error = await deferToThread(outcome, target, partial, half_close=False, timeout=10)
            assert isinstance(error, ConnectionResetError)
            assert 0.25 < time.monotonic() - started < 5
        assert await deferToThread(talk, target, b"quick") == b"quick"
        assert len([e for e in logged if e["log_level"] is LogLevel.info]) == 2
        await until(lambda: not factory.connections)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_socat_reports_the_reset(tmp_path: Path, logged: list[dict[str, Any]]) -> None:
    """With ``-d`` socat warns about the reset on stderr (its exit status stays 0, as documented)."""

    def handler(request: Request) -> bytes:
        raise ValueError("failure")

    port, target = await serve(HalfCloseServerFactory(handler), "tcp", tmp_path)
    try:
        argv = socat_argv(target)
        argv.insert(1, "-d")  # warnings too
        done = await deferToThread(subprocess.run, argv, input=b"q", capture_output=True, timeout=30)
        assert done.stdout == b""
        assert b"Connection reset by peer" in done.stderr
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_unix_too_large_fails_the_writer(tmp_path: Path) -> None:
    """AF_UNIX has no reset, but a client still writing an oversized request gets an error."""
    port, target = await serve(HalfCloseServerFactory(echo, max_request=1000), "unix", tmp_path)
    try:
        error = await deferToThread(outcome, target, b"x" * (8 * 1024 * 1024))
        assert isinstance(error, (ConnectionResetError, BrokenPipeError))
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_unix_failure_after_the_whole_request_is_an_end_of_file(
    tmp_path: Path, logged: list[dict[str, Any]]
) -> None:
    """The documented AF_UNIX limitation: with nothing left unread, the kernel sends no reset."""

    def handler(request: Request) -> bytes:
        raise ValueError("failure")

    port, target = await serve(HalfCloseServerFactory(handler), "unix", tmp_path)
    try:
        assert await deferToThread(outcome, target, b"small") == b""
        assert len([e for e in logged if "log_failure" in e]) == 1
    finally:
        await port.stopListening()

"""Backpressure of streamed half-close requests over real loopback sockets.

A slow handler pauses reading (the client's ``sendall`` blocks), a slow writer is
served chunk by chunk as it sends, and a slow reader pauses the handler's streamed
answer.  Each peer runs in a thread, paced at a few hundred KiB/s for about 2 s.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from sockproto.halfclose.client import halfclose_request
from sockproto.halfclose.server import HalfCloseServerFactory
from sockproto.serving.streaming import streaming

from ..helpers import listen

KiB = 1024
MiB = 1024 * KiB
PACE = 300 * KiB  # bytes per second of the slow side


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    return s


@pytest_twisted.ensureDeferred
async def test_slow_handler_blocks_the_client() -> None:
    state = {"fast": False, "taken": 0}

    @streaming
    async def slow(request: Any) -> bytes:
        async for chunk in request.body:
            state["taken"] += len(chunk)
            if not state["fast"]:  # a few hundred KiB/s
                await deferLater(reactor, len(chunk) / PACE, lambda: None)
        return b"%d\n" % state["taken"]

    factory = HalfCloseServerFactory(slow, max_request=None)
    port = await listen(factory)
    total = 48 * MiB  # more than loopback's socket buffers can hold
    progress = {"sent": 0}

    def client() -> bytes:
        with connect(port.getHost().port) as s:
            block = b"y" * (256 * KiB)
            for _ in range(total // len(block)):
                s.sendall(block)
                progress["sent"] += len(block)
            s.shutdown(socket.SHUT_WR)
            return s.makefile("rb").read()

    try:
        answer = deferToThread(client)
        await deferLater(reactor, 2.0, lambda: None)
        read = factory.metrics.bytes_in
        assert factory.metrics.reads_paused >= 1
        assert progress["sent"] < total  # the client is blocked in sendall
        assert read - state["taken"] <= 2 * MiB  # held: the high-water mark and one read
        assert state["taken"] < 2 * PACE * 2.0 + 2 * MiB
        state["fast"] = True
        assert await answer == b"%d\n" % total
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_slow_writer_is_served_as_it_sends() -> None:
    arrivals: list[tuple[float, int]] = []

    @streaming
    async def record(request: Any) -> bytes:
        async for chunk in request.body:
            arrivals.append((time.monotonic(), len(chunk)))
        return b"ok\n"

    factory = HalfCloseServerFactory(record, max_request=None, handler_timeout=5)
    port = await listen(factory)

    def client() -> tuple[float, bytes]:
        with connect(port.getHost().port) as s:
            for _ in range(20):  # 32 KiB every 0.1 s: about 320 KiB/s for 2 s
                s.sendall(b"z" * (32 * KiB))
                time.sleep(0.1)
            ended = time.monotonic()
            s.shutdown(socket.SHUT_WR)
            return ended, s.makefile("rb").read()

    try:
        ended, answer = await deferToThread(client)
        assert answer == b"ok\n"
        assert sum(n for _, n in arrivals) == 20 * 32 * KiB
        assert arrivals[0][0] < ended - 1.5  # the handler had the first chunk long before the end
        assert len(arrivals) >= 10
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_slow_reader_pauses_the_answer() -> None:
    pulled = {"bytes": 0}
    total = 32 * MiB

    @streaming
    async def produce(request: Any) -> AsyncIterator[bytes]:
        await request.body.read()
        return chunks()

    async def chunks() -> AsyncIterator[bytes]:
        block = b"a" * (64 * KiB)
        for _ in range(total // len(block)):
            pulled["bytes"] += len(block)
            yield block

    factory = HalfCloseServerFactory(produce, max_request=1024)
    port = await listen(factory)
    seen = {"read": 0, "pulled_at_2s": 0}

    def client() -> int:
        with connect(port.getHost().port) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
            s.sendall(b"go")
            s.shutdown(socket.SHUT_WR)
            started = time.monotonic()
            while time.monotonic() - started < 2.0:  # 30 KiB every 0.1 s: 300 KiB/s
                data = s.recv(30 * KiB)
                seen["read"] += len(data)
                time.sleep(0.1)
            seen["pulled_at_2s"] = pulled["bytes"]
            while data := s.recv(1024 * KiB):
                seen["read"] += len(data)
            return seen["read"]

    try:
        assert await deferToThread(client) == total
        assert factory.metrics.answers_paused >= 1
        # without backpressure the whole 32 MiB would have been pulled at once
        assert seen["pulled_at_2s"] < 16 * MiB, seen
        assert factory.metrics.answers == 1
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_client_sends_an_async_iterator_and_streams_the_answer() -> None:
    @streaming
    async def count(request: Any) -> bytes:
        n = 0
        async for chunk in request.body:
            n += len(chunk)
        return b"%d" % n

    factory = HalfCloseServerFactory(count, max_request=None)
    port = await listen(factory)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"q" * (128 * KiB)

    received: list[bytes] = []
    try:
        endpoint = f"tcp:host=127.0.0.1:port={port.getHost().port}"
        answer = await halfclose_request(endpoint, body(), on_data=received.append)
        assert answer == b""
        assert b"".join(received) == b"%d" % (64 * 128 * KiB)
    finally:
        await port.stopListening()

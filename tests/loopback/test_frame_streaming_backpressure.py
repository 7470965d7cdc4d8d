"""Backpressure of streamed request frames over real loopback sockets.

A slow streaming handler pauses reading (the client's ``sendall`` blocks while the
server holds at most its 1 MiB bound and a read), a slow writer's frame reaches the
handler piece by piece as it is sent, the next request on the same connection served
after it, and a slow reader pauses a sized answer's iterator.  Each peer runs in a
thread, paced at a few hundred KiB/s for about 2 s.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from sockproto.frame.server import FrameServerFactory
from sockproto.serving.streaming import SizedAnswer, streaming

from ..helpers import listen

KiB = 1024
MiB = 1024 * KiB
PACE = 300 * KiB  # bytes per second of the slow side


def header(ident: int, length: int) -> bytes:
    return struct.pack(">2sBBII", b"SP", 1, 1, ident, length)


def read_answers(s: socket.socket, count: int, data: bytes = b"") -> list[tuple[int, int, bytes]]:
    """``count`` SPF/1 frames from ``data`` (what was read already), then ``s``: (kind, id, payload)."""
    frames = []
    while len(frames) < count:
        while len(data) < 12 or len(data) < 12 + struct.unpack(">I", data[8:12])[0]:
            chunk = s.recv(65536)
            assert chunk, f"closed after {data!r}"
            data += chunk
        _, _, kind, ident, n = struct.unpack(">2sBBII", data[:12])
        frames.append((kind, ident, data[12 : 12 + n]))
        data = data[12 + n :]
    return frames


@pytest_twisted.ensureDeferred
async def test_slow_handler_blocks_the_client() -> None:
    state = {"fast": False, "taken": 0}

    @streaming
    async def slow(request: Any) -> bytes:
        async for chunk in request.body:
            state["taken"] += len(chunk)
            if not state["fast"]:  # a few hundred KiB/s
                await deferLater(reactor, len(chunk) / PACE, lambda: None)
        return b"%d" % state["taken"]

    factory = FrameServerFactory(slow, max_payload=None)
    port = await listen(factory)
    total = 48 * MiB  # more than loopback's socket buffers can hold
    progress = {"sent": 0}

    def client() -> list[tuple[int, int, bytes]]:
        with socket.create_connection(("127.0.0.1", port.getHost().port), timeout=30) as s:
            s.sendall(header(1, total))
            block = b"y" * (256 * KiB)
            for _ in range(total // len(block)):
                s.sendall(block)
                progress["sent"] += len(block)
            return read_answers(s, 1)

    try:
        answer = deferToThread(client)
        await deferLater(reactor, 2.0, lambda: None)
        read = factory.metrics.bytes_in
        assert factory.metrics.reads_paused >= 1
        assert progress["sent"] < total  # the client is blocked in sendall
        assert read - state["taken"] <= 2 * MiB  # held: the high-water mark and one read
        assert state["taken"] < 2 * PACE * 2.0 + 2 * MiB
        state["fast"] = True
        assert await answer == [(2, 1, b"%d" % total)]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_slow_writer_is_served_as_it_sends_then_the_next_request() -> None:
    arrivals: list[tuple[float, int]] = []

    @streaming
    async def record(request: Any) -> bytes:
        digest = hashlib.sha256()
        async for chunk in request.body:
            arrivals.append((time.monotonic(), len(chunk)))
            digest.update(chunk)
        return digest.hexdigest().encode()

    factory = FrameServerFactory(record, handler_timeout=5)
    port = await listen(factory)
    body = b"z" * (32 * KiB)

    def client() -> tuple[float, list[tuple[int, int, bytes]]]:
        with socket.create_connection(("127.0.0.1", port.getHost().port), timeout=30) as s:
            s.sendall(header(1, 20 * len(body)))
            for _ in range(20):  # 32 KiB every 0.1 s: about 320 KiB/s for 2 s
                s.sendall(body)
                time.sleep(0.1)
            ended = time.monotonic()
            s.sendall(header(2, 3) + b"abc")
            return ended, read_answers(s, 2)

    try:
        ended, answers = await deferToThread(client)
        assert answers == [
            (2, 1, hashlib.sha256(body * 20).hexdigest().encode()),
            (2, 2, hashlib.sha256(b"abc").hexdigest().encode()),
        ]
        assert sum(n for _, n in arrivals) == 20 * len(body) + 3
        assert arrivals[0][0] < ended - 1.5  # the handler had the first piece long before the end
        assert len(arrivals) >= 10
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_slow_reader_pauses_a_sized_answer() -> None:
    pulled = {"bytes": 0}
    total = 32 * MiB
    block = b"a" * (64 * KiB)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(total // len(block)):
            pulled["bytes"] += len(block)
            yield block

    @streaming
    async def produce(request: Any) -> SizedAnswer:
        await request.body.read()
        return SizedAnswer(total, chunks())

    factory = FrameServerFactory(produce)
    port = await listen(factory)
    seen = {"pulled_at_2s": 0}

    def client() -> list[tuple[int, int, bytes]]:
        with socket.create_connection(("127.0.0.1", port.getHost().port), timeout=30) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
            s.sendall(header(1, 2) + b"go" + header(2, 0))  # a second request, answered after
            data = b""
            started = time.monotonic()
            while time.monotonic() - started < 2.0:  # 30 KiB every 0.1 s: 300 KiB/s
                data += s.recv(30 * KiB)
                time.sleep(0.1)
            seen["pulled_at_2s"] = pulled["bytes"]
            while len(data) < 12 + total + 12 + 1:
                chunk = s.recv(1024 * KiB)
                assert chunk
                data += chunk
            first = struct.unpack(">2sBBII", data[:12])
            assert first[2:] == (2, 1, total), first
            assert data[12 : 12 + total] == block * (total // len(block))
            return read_answers(s, 1, data[12 + total :])

    try:
        rest = await deferToThread(client)
        assert rest[0][:2] == (2, 2)  # the second request, after the whole sized answer
        assert factory.metrics.answers_paused >= 1
        assert seen["pulled_at_2s"] < 16 * MiB, seen  # without backpressure all 32 MiB at once
    finally:
        await port.stopListening()

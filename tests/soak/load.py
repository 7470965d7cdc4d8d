"""The soak test's clients: good requests mixed with every bad input, over real loopback sockets.

Every scenario checks what the service must answer (issues 2, 3 and 4) and records
it in a :class:`Tally`: good requests sent and answered correctly, bad inputs tried
by kind, and any wrong outcome in ``failures``.  Scenarios run in asyncio tasks, each
bounded by a timeout, until the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import random
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

HEADER = struct.Struct(">2sBBII")
INT32 = struct.Struct(">I")
REQ, RESP, ERR, PING, PONG = 1, 2, 3, 4, 5
SCENARIO_TIMEOUT = 60.0  # seconds one scenario may take, slowloris included, on a loaded machine


def digest(data: bytes) -> bytes:
    """The sha256 handler's answer."""
    return hashlib.sha256(data).hexdigest().encode() + b"\n"


def spf1(kind: int, ident: int, payload: bytes, length: int | None = None) -> bytes:
    return HEADER.pack(b"SP", 1, kind, ident, len(payload) if length is None else length) + payload


@dataclass
class Tally:
    """What the clients did and saw."""

    good_sent: Counter[str] = field(default_factory=Counter)
    good_answered: Counter[str] = field(default_factory=Counter)
    bad: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        if len(self.failures) < 200:
            self.failures.append(message)

    def good(self, service: str, ok: bool, what: str) -> None:
        self.good_sent[service] += 1
        if ok:
            self.good_answered[service] += 1
        else:
            self.fail(f"{service}: {what}")


async def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (RST), not a FIN."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    await asyncio.sleep(0)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def read_eof(reader: asyncio.StreamReader) -> bytes | None:
    """Read to the end of the stream; ``None`` if it ends with a reset."""
    try:
        return await reader.read()
    except (ConnectionResetError, BrokenPipeError):
        return None


async def send_in_pieces(writer: asyncio.StreamWriter, data: bytes, rng: random.Random) -> None:
    """Write ``data`` cut at random places (the server sees arbitrary reads)."""
    while data:
        n = rng.choice((1, 5, 12, 100, 4096, len(data)))
        writer.write(data[:n])
        data = data[n:]
        await writer.drain()


class FrameClient:
    """SPF/1 scenarios against ``sockproto-frame --handler sha256 --max-payload MAX``."""

    def __init__(self, port: int, max_payload: int, tally: Tally, rng: random.Random) -> None:
        self.port = port
        self.max = max_payload
        self.tally = tally
        self.rng = rng
        self.next_id = rng.randrange(1, 2**31)

    def ident(self) -> int:
        self.next_id = self.next_id % (2**32 - 1) + 1
        return self.next_id

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    def size(self) -> int:
        """Sizes at and around every limit, mostly small."""
        if self.rng.random() < 0.05:
            return self.rng.choice((self.max - 1, self.max))
        return self.rng.choice((0, 1, 11, 12, 13, 100, 1000, 4096, self.rng.randrange(0, 2048)))

    async def read_frames(self, reader: asyncio.StreamReader, count: int) -> list[tuple[int, int, bytes]]:
        frames = []
        for _ in range(count):
            _, _, kind, ident, length = HEADER.unpack(await reader.readexactly(HEADER.size))
            frames.append((kind, ident, await reader.readexactly(length)))
        return frames

    async def pipeline(self) -> None:
        """Requests (sizes at and around the limit), pings, wrong kinds, oversized frames and
        id 0, pipelined and cut anywhere; every one answered by id; maybe a reset at the end."""
        rng = self.rng
        expected: dict[int, tuple[int, Any, str]] = {}
        data = []
        for _ in range(rng.randint(1, 12)):
            what = rng.choices(["request", "ping", "kind", "oversized", "zero"], [10, 2, 1, 1, 1])[0]
            ident = 0 if what == "zero" and 0 not in expected else self.ident()
            payload = os.urandom(self.size())
            if what in ("request", "zero"):
                expected[ident] = (RESP, digest(payload), "good")
                data.append(spf1(REQ, ident, payload))
            elif what == "ping":
                expected[ident] = (PONG, payload, "good")
                data.append(spf1(PING, ident, payload))
            elif what == "kind":
                kind = rng.choice((RESP, ERR, PONG, 0, 6, 200, 255))
                expected[ident] = (ERR, 3, f"kind {kind}")
                data.append(spf1(kind, ident, payload[:100]))
            else:
                extra = rng.choice((1, 2, 100))
                expected[ident] = (ERR, 2, f"length max+{extra}")
                data.append(spf1(rng.choice((REQ, PING, RESP)), ident, b"\0" * (self.max + extra)))
        reader, writer = await self.connect()
        try:
            await send_in_pieces(writer, b"".join(data), rng)
            if rng.random() < 0.1:  # a random reset with answers still due
                await reset(writer)
                self.tally.bad["frame: reset with answers due"] += 1
                return
            half_close = rng.random() < 0.1  # shutdown(SHUT_WR), then read every answer
            if half_close:
                writer.write_eof()
            for kind, ident, payload in await self.read_frames(reader, len(expected)):
                want = expected.pop(ident, None)
                if want is None:
                    self.tally.fail(f"frame: an answer to id {ident} that was not asked or already answered")
                    continue
                wkind, wvalue, what = want
                right = payload == wvalue if wkind != ERR else payload[:2] == struct.pack(">H", wvalue)
                ok = kind == wkind and right
                if what == "good":
                    self.tally.good("frame", ok, f"id {ident}: kind {kind}, {payload[:40]!r}")
                else:
                    self.tally.bad[f"frame: {what}"] += 1
                    if not ok:
                        self.tally.fail(f"frame: {what} got kind {kind} {payload[:40]!r}")
            if half_close:
                rest = await read_eof(reader)
                self.tally.bad["frame: half-close after the last request"] += 1
                if rest != b"":
                    self.tally.fail(f"frame: after a half-close and every answer, {rest!r}, not a close")
        finally:
            await close(writer)

    async def broken_header(self) -> None:
        """Each constant field wrong: ERROR 1 with id 0 after the answers due, then the server closes."""
        field_offset = self.rng.choice((0, 1, 2))
        payload = os.urandom(self.rng.randrange(0, 64))
        good_id = self.ident()
        bad = bytearray(spf1(REQ, self.ident(), b""))  # nothing after it: all of it is read
        bad[field_offset] ^= 0x21
        reader, writer = await self.connect()
        try:
            writer.write(spf1(REQ, good_id, payload) + bytes(bad))
            await writer.drain()
            frames = await self.read_frames(reader, 2)
            first = frames[0] == (RESP, good_id, digest(payload))
            self.tally.good("frame", first, f"before a broken header: {frames[0]}")
            ok = frames[1][:2] == (ERR, 0) and frames[1][2][:2] == b"\0\1"
            rest = await read_eof(reader)
            self.tally.bad[f"frame: header byte {field_offset} wrong"] += 1
            if not ok or rest not in (b"", None):
                self.tally.fail(f"frame: broken header byte {field_offset}: {frames[1]!r}, then {rest!r}")
        finally:
            await close(writer)

    async def length_off(self) -> None:
        """A length field shorter than the payload sent: the request is cut, the rest is garbage."""
        payload = b"x" * self.rng.randrange(4, 200)
        cut = self.rng.randrange(1, 4)
        ident = self.ident()
        reader, writer = await self.connect()
        try:
            writer.write(spf1(REQ, ident, payload, len(payload) - cut))
            await writer.drain()
            frames = await self.read_frames(reader, 2)
            first_ok = frames[0] == (RESP, ident, digest(payload[:-cut]))
            ok = first_ok and frames[1][:2] == (ERR, 0) and frames[1][2][:2] == b"\0\1"
            self.tally.bad["frame: length field short"] += 1
            if not ok:
                self.tally.fail(f"frame: short length field: {frames!r}")
        finally:
            await close(writer)

    async def huge_length(self) -> None:
        """A header announcing 4 GiB: ERROR 2 at once, before any payload; then give up."""
        ident = self.ident()
        reader, writer = await self.connect()
        try:
            writer.write(spf1(REQ, ident, b"", 2**32 - 1) + b"some of it")
            await writer.drain()
            frames = await self.read_frames(reader, 1)
            self.tally.bad["frame: length 2**32-1"] += 1
            if frames[0][:2] != (ERR, ident) or frames[0][2][:2] != b"\0\2":
                self.tally.fail(f"frame: 4 GiB header got {frames[0]!r}")
            await reset(writer)
        finally:
            await close(writer)

    async def slowloris(self, interval: float) -> None:
        """One good request, one byte per ``interval``: still answered."""
        payload = os.urandom(self.rng.randrange(0, 12))
        ident = self.ident()
        reader, writer = await self.connect()
        try:
            for byte in spf1(REQ, ident, payload):
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(interval)
            frames = await self.read_frames(reader, 1)
            self.tally.bad["frame: slowloris (1 byte per interval)"] += 1
            answered = frames[0] == (RESP, ident, digest(payload))
            self.tally.good("frame", answered, f"slowloris: {frames[0]!r}")
        finally:
            await close(writer)


class Int32Client:
    """Bare-length scenarios against ``sockproto-frame --header int32 --handler sha256``."""

    def __init__(self, port: int, max_payload: int, tally: Tally, rng: random.Random) -> None:
        self.port = port
        self.max = max_payload
        self.tally = tally
        self.rng = rng

    async def pipeline(self) -> None:
        """Requests answered in request order; an oversized one closes after the answers due."""
        rng = self.rng
        sizes = (0, 1, 3, 4, 5, 100, self.max - 1, self.max)
        payloads = [os.urandom(rng.choice(sizes)) for _ in range(rng.randint(1, 8))]
        oversized = rng.random() < 0.2
        data = b"".join(INT32.pack(len(p)) + p for p in payloads)
        if oversized:  # the last bytes sent, so that the server has read everything when it closes
            data += INT32.pack(self.max + rng.choice((1, 2, 1000)))
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            await send_in_pieces(writer, data, rng)
            for p in payloads:
                (n,) = INT32.unpack(await reader.readexactly(4))
                answer = await reader.readexactly(n)
                self.tally.good("int32", answer == digest(p), f"in order: {answer[:40]!r}")
            if oversized:
                rest = await read_eof(reader)
                self.tally.bad["int32: length over max (closes)"] += 1
                if rest not in (b"", None):
                    self.tally.fail(f"int32: after an oversized frame the server sent {rest[:40]!r}")
        finally:
            await close(writer)

    async def slowloris(self, interval: float, idle_timeout: float | None) -> None:
        """One request, one byte per ``interval``: answered, or closed at ``--idle-timeout``
        when the server has one (a frame dribbled in is not activity)."""
        payload = os.urandom(8)
        data = INT32.pack(len(payload)) + payload
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        started = time.monotonic()
        try:
            try:
                for byte in data:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(interval)
                    if reader.at_eof():  # closed: no need to go on
                        break
                if idle_timeout is None:
                    answer: bytes | None = await reader.readexactly(4 + 65)
                else:
                    answer = await reader.read(100)
            except (ConnectionResetError, BrokenPipeError):
                answer = None
            took = time.monotonic() - started
            if idle_timeout is None:
                self.tally.bad["int32: slowloris (1 byte per interval)"] += 1
                self.tally.good("int32", answer == INT32.pack(65) + digest(payload), f"slowloris: {answer!r}")
            else:
                self.tally.bad["int32: slowloris (closed at --idle-timeout)"] += 1
                if answer not in (b"", None) or took < idle_timeout - 0.5:
                    self.tally.fail(f"int32: slowloris got {answer!r} after {took:.1f} s")
        finally:
            await close(writer)


class HalfCloseClient:
    """Scenarios against ``sockproto-halfclose --handler sha256 --max-request MAX``."""

    def __init__(self, port: int, max_request: int, timeout: float, tally: Tally, rng: random.Random) -> None:
        self.port = port
        self.max = max_request
        self.timeout = timeout
        self.tally = tally
        self.rng = rng

    async def request(self) -> None:
        """A whole request then a half-close (sizes at and around the limit): answer or reset."""
        sizes = (0, 1, 100, 4096, self.rng.randrange(0, 8192), self.max - 1, self.max, self.max + 1)
        n = self.rng.choice(sizes)
        payload = os.urandom(n)
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            try:
                await send_in_pieces(writer, payload, self.rng)
                writer.write_eof()
                answer = await read_eof(reader)
            except (ConnectionResetError, BrokenPipeError):
                answer = None
            except OSError as e:  # ENOTCONN from shutdown(SHUT_WR): the reset came first
                if e.errno != errno.ENOTCONN:
                    raise
                answer = None
            if n <= self.max:
                self.tally.good("halfclose", answer == digest(payload), f"{n} bytes: {answer!r}"[:120])
            else:
                self.tally.bad["halfclose: request over max (reset)"] += 1
                if answer is not None:
                    self.tally.fail(f"halfclose: a {n}-byte request got {answer[:40]!r}, not a reset")
        finally:
            await close(writer)

    async def abandon(self) -> None:
        """Part of a request, then a reset (or a close without reading the answer)."""
        _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(os.urandom(self.rng.randrange(0, 5000)))
            await writer.drain()
            if self.rng.random() < 0.5:
                await reset(writer)
                self.tally.bad["halfclose: reset mid-request"] += 1
            else:
                self.tally.bad["halfclose: close without reading the answer"] += 1
        finally:
            await close(writer)

    async def slowloris(self, interval: float) -> None:
        """One byte per ``interval`` and never a half-close: reset at ``--request-timeout``."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        started = time.monotonic()
        outcome = "still open"
        try:
            while time.monotonic() - started < self.timeout * 3 + 10:
                writer.write(b"s")
                await writer.drain()
                try:
                    data = await asyncio.wait_for(reader.read(100), interval)
                except TimeoutError:
                    continue
                outcome = f"read {data!r}"
                break
        except (ConnectionResetError, BrokenPipeError):
            outcome = "reset"
        finally:
            await close(writer)
        took = time.monotonic() - started
        self.tally.bad["halfclose: slowloris (reset at request timeout)"] += 1
        if outcome != "reset" or took < self.timeout - 0.5:
            self.tally.fail(f"halfclose: slowloris: {outcome} after {took:.1f} s")


class DatagramClient:
    """SPF/1 datagrams against ``sockproto-datagram`` (echo): bad ones get nothing, good ones their echo."""

    BAD = ("short", "magic", "version", "kind", "truncated", "trailing")

    def __init__(self, port: int, tally: Tally, rng: random.Random) -> None:
        self.port = port
        self.tally = tally
        self.rng = rng
        self.next_id = rng.randrange(2, 2**31)
        self.asked: set[int] = set()

    def bad(self, what: str) -> bytes:
        good = spf1(REQ, self.rng.randrange(2**32), os.urandom(self.rng.randrange(0, 100)))
        return {
            "short": good[: self.rng.randrange(0, 12)],
            "magic": b"XP" + good[2:],
            "version": b"SP\x07" + good[3:],
            "kind": spf1(self.rng.choice((RESP, ERR, PONG, 0, 9)), 1, b"k"),
            "truncated": spf1(REQ, 1, b"abc", 10),
            "trailing": spf1(REQ, 1, b"abc", 1),
        }[what]

    async def exchange(self, sock: socket.socket) -> None:
        """A bad datagram, then a good request retransmitted until answered: the only reply
        is the echo (or a duplicate answer to an earlier retransmission of this socket)."""
        loop = asyncio.get_running_loop()
        what = self.rng.choice(self.BAD)
        self.tally.bad[f"datagram: {what}"] += 1
        await loop.sock_sendall(sock, self.bad(what))
        self.next_id = self.next_id % (2**32 - 1) + 2  # never 1, the id of the bad ones
        ident = self.next_id
        self.asked.add(ident)
        size = self.rng.choice((0, 1, 100, 1400, self.rng.randrange(0, 4000), 65507 - 12))
        payload = os.urandom(size)
        request = spf1(REQ, ident, payload)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            await loop.sock_sendall(sock, request)
            try:
                reply = await asyncio.wait_for(loop.sock_recv(sock, 65536), 0.3)
            except TimeoutError:
                continue
            rid = HEADER.unpack_from(reply)[3] if len(reply) >= HEADER.size else None
            if rid != ident and rid in self.asked:
                continue  # the cache answering an earlier retransmission again
            self.tally.good("datagram", reply == spf1(RESP, ident, payload), f"id {ident}: {reply[:20]!r}")
            return
        self.tally.good("datagram", False, f"id {ident}: no answer in 30 s")


async def flood(port: int, source: str, until: float, tally: Tally, rng: random.Random, rate: int) -> None:
    """Send ``rate`` datagrams a second from ``source``: every kind of garbage, valid requests
    never read, and maximal datagrams.  Replies are never read."""
    client = DatagramClient(port, tally, rng)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        sock.bind((source, 0))
    except OSError:
        sock.bind(("127.0.0.1", 0))
    burst = max(1, rate // 20)
    big = spf1(REQ, 7, b"\0" * (65507 - 12))
    try:
        while time.monotonic() < until:
            for _ in range(burst):
                what = rng.choice((*DatagramClient.BAD, "request", "big"))
                if what == "big":
                    data = big
                elif what == "request":
                    data = spf1(REQ, rng.randrange(2**32), b"f" * 20)
                else:
                    data = client.bad(what)
                try:
                    sock.sendto(data, ("127.0.0.1", port))
                except (BlockingIOError, ConnectionRefusedError):
                    tally.bad["datagram flood: not sent (buffer full)"] += 1
                    continue
                tally.bad[f"datagram flood: {what}"] += 1
            await asyncio.sleep(0.05)
    finally:
        sock.close()


async def truncated(port: int, data: bytes, offset: int, fin: bool, tally: Tally, label: str) -> None:
    """Send ``data[:offset]`` (an incomplete frame), then a FIN or a reset: no answer, ever."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data[:offset])
        await writer.drain()
        if fin:
            writer.write_eof()
            rest = await read_eof(reader)
            if rest not in (b"", None):
                tally.fail(f"{label}: {offset} of {len(data)} bytes then FIN got {rest[:40]!r}")
        else:
            await reset(writer)
        tally.bad[f"{label}: truncated frame then {'FIN' if fin else 'reset'}"] += 1
    finally:
        await close(writer)

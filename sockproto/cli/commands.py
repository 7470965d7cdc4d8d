"""The one-request subcommands: ``frame``, ``datagram``, ``halfclose`` and ``ping``.

Each sends its payload ``count`` times, one request after the other, writes every
answer's bytes to stdout as it comes, and stops at the first failure, which
:func:`~sockproto.cli.errors.describe` turns into an exit status and a one-line message.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TextIO, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IStreamClientEndpoint

from ..core.header import HeaderSpec
from ..datagram.client import DEFAULT_RETRIES, DatagramClientProtocol, connect_datagram
from ..datagram.endpoints import UDPClientEndpoint
from ..frame.client import FrameClientProtocol
from ..frame.pool import FramePool
from ..halfclose.client import halfclose_request
from .endpoints import Target
from .errors import CommandError, Status, describe

__all__ = [
    "Call",
    "Streams",
    "connect_datagram_client",
    "connect_frame_client",
    "connect_with_timeout",
    "open_pool",
    "run_datagram",
    "run_frame",
    "run_frame_stream",
    "run_halfclose",
    "run_ping",
]

T = TypeVar("T")


@dataclass
class Streams:
    """Where answers (bytes, stdout) and reports (text, stderr) go."""

    out: BinaryIO
    err: TextIO

    def answer(self, data: bytes) -> None:
        """Write one answer's bytes, at once (a pipeline reading us sees it now).

        :raises CommandError: :attr:`~Status.OUTPUT_CLOSED` if nobody reads stdout any more
            (``sockproto frame ... --count 1000 | head -c 10``).
        """
        try:
            self.out.write(data)
            self.out.flush()
        except BrokenPipeError:
            with contextlib.suppress(OSError, ValueError):  # so that exiting flushes nothing
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.out.fileno())
            raise CommandError(Status.OUTPUT_CLOSED, "") from None


@dataclass
class Call:
    """What one subcommand run sends, where, and how patiently.

    :ivar header: the frame header (``frame``, ``ping`` over a stream).
    :ivar mode: the datagram mode, ``spf1`` or ``raw`` (``datagram``, ``ping`` over UDP).
    :ivar pool: the endpoints of a :class:`~sockproto.frame.pool.FramePool` (``--endpoint``,
        ``--connections``), empty for one plain connection.
    :ivar proxy_header: sent first on each connection (``--proxy-v2``), or nothing.
    """

    target: Target
    payload: bytes
    count: int = 1
    timeout: float = 10.0
    header: HeaderSpec | None = None
    mode: str = "spf1"
    retries: int = DEFAULT_RETRIES
    pool: list[str] = field(default_factory=list)
    connections: int = 1
    keepalive: float | None = 30.0
    proxy_header: bytes = b""


async def connect_with_timeout(reactor: Any, call: Call, connecting: Deferred[T]) -> T:
    """Wait for ``connecting`` at most ``call.timeout`` seconds; say so in the error if not."""
    connecting.addTimeout(call.timeout, reactor)
    try:
        return await connecting
    except (CancelledError, ConnectingCancelledError):
        raise CommandError(
            Status.NO_ANSWER,
            f"could not connect to {call.target.text}: no connection within {call.timeout:g} s",
        ) from None


async def connect_frame_client(reactor: Any, call: Call) -> FrameClientProtocol:
    """Connect a frame client to ``call.target`` with ``call.header``."""
    assert call.header is not None
    endpoint = call.target.endpoint
    assert IStreamClientEndpoint.providedBy(endpoint)
    proto = FrameClientProtocol(call.header, clock=reactor, proxy_header=call.proxy_header)
    return await connect_with_timeout(reactor, call, connectProtocol(endpoint, proto))


async def connect_datagram_client(reactor: Any, call: Call) -> DatagramClientProtocol:
    """Connect a datagram client to ``call.target`` in ``call.mode``."""
    endpoint = call.target.endpoint
    assert isinstance(endpoint, UDPClientEndpoint)
    connecting = connect_datagram(
        endpoint, mode="raw" if call.mode == "raw" else "spf1", timeout=call.timeout, reactor=reactor
    )
    return await connect_with_timeout(reactor, call, connecting)


async def _close(closing: Deferred[None], reactor: Any) -> None:
    """Wait a moment for a clean close; the answers are out already, so never fail on it."""
    closing.addTimeout(1.0, reactor)
    with contextlib.suppress(Exception):  # best effort: the process is about to end anyway
        await closing


def open_pool(reactor: Any, call: Call) -> FramePool:
    """A started frame pool over ``call.pool``."""
    assert call.header is not None
    pool = FramePool(
        call.pool,
        connections=call.connections,
        header=call.header,
        keepalive=call.keepalive,
        connect_timeout=call.timeout,
        reactor=reactor,
    )
    pool.startService()  # type: ignore[no-untyped-call]
    return pool


async def run_frame(reactor: Any, call: Call, streams: Streams) -> Status:
    """``sockproto frame``: REQUEST frames over one stream connection (or a pool)."""
    if call.pool:
        pool = open_pool(reactor, call)
        try:
            for _ in range(call.count):
                streams.answer(await _request(pool.request(call.payload, timeout=call.timeout), call))
        finally:
            await _close(pool.close(), reactor)
        return Status.ANSWERED
    client = await connect_frame_client(reactor, call)
    try:
        for _ in range(call.count):
            streams.answer(await _request(client.request(call.payload, timeout=call.timeout), call))
    finally:
        await _close(client.close(), reactor)
    return Status.ANSWERED


async def run_frame_stream(
    reactor: Any, call: Call, source: BinaryIO, length: int, streams: Streams
) -> Status:
    """``sockproto frame --file PATH``: one REQUEST whose payload is read from the file as it is sent.

    The file's ``length`` bytes go out in bounded memory (a server's streaming handler
    takes them in pieces); ``call.timeout`` bounds the whole exchange.  Closes ``source``.
    """
    try:
        client = await connect_frame_client(reactor, call)
        try:
            streams.answer(await _request(client.request_stream(source, length, timeout=call.timeout), call))
        finally:
            await _close(client.close(), reactor)
    finally:
        source.close()
    return Status.ANSWERED


async def run_datagram(reactor: Any, call: Call, streams: Streams) -> Status:
    """``sockproto datagram``: one datagram per request, retransmitted until answered."""
    client = await connect_datagram_client(reactor, call)
    try:
        for _ in range(call.count):
            asked = client.request(call.payload, timeout=call.timeout, retries=call.retries)
            streams.answer(await _request(asked, call))
    finally:
        await _close(client.close(), reactor)
    return Status.ANSWERED


async def run_halfclose(reactor: Any, call: Call, streams: Streams) -> Status:
    """``sockproto halfclose``: one connection per request, ended by our half-close."""
    endpoint = call.target.endpoint
    assert IStreamClientEndpoint.providedBy(endpoint)
    for _ in range(call.count):
        asked = halfclose_request(
            endpoint, call.payload, timeout=call.timeout, reactor=reactor, proxy_header=call.proxy_header
        )
        streams.answer(await _request(asked, call))
    return Status.ANSWERED


async def run_ping(reactor: Any, call: Call, streams: Streams) -> Status:
    """``sockproto ping``: PING frames (or datagrams); PONG payloads to stdout, times to stderr."""
    pinger: FrameClientProtocol | DatagramClientProtocol
    if call.target.is_datagram:
        pinger = await connect_datagram_client(reactor, call)
    else:
        pinger = await connect_frame_client(reactor, call)
    try:
        for seq in range(1, call.count + 1):
            started = time.perf_counter()
            if isinstance(pinger, DatagramClientProtocol):
                asked = pinger.ping(call.payload, timeout=call.timeout, retries=call.retries)
            else:
                asked = pinger.ping(call.payload, timeout=call.timeout)
            pong = await _request(asked, call)
            elapsed = (time.perf_counter() - started) * 1000
            streams.answer(pong)
            streams.err.write(f"pong {seq} from {call.target.text}: {len(pong)} bytes, {elapsed:.3f} ms\n")
            streams.err.flush()
    finally:
        await _close(pinger.close(), reactor)
    return Status.ANSWERED


async def _request(asked: Deferred[bytes], call: Call) -> bytes:
    """Wait for one answer; any failure becomes a :class:`CommandError`."""
    try:
        return await asked
    except Exception as e:
        raise describe(e, call.target.text) from None

"""Send a half-close request body from a file or an async iterator, with backpressure.

The client (:class:`~sockproto.halfclose.client.HalfCloseClientProtocol`) uses
:func:`send_body` for any request that is not ``bytes``: the body is read one chunk
at a time, and the next chunk only once the transport has sent the previous ones
(it is a streaming producer on the transport), so a 2 GiB file goes out in bounded
memory, as fast as the server takes it.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, BinaryIO, TypeAlias

from twisted.internet.defer import Deferred

from ..serving.answering import as_answer
from ..serving.streaming import AnswerWriter

__all__ = ["CHUNK_SIZE", "Body", "file_chunks", "send_body"]

CHUNK_SIZE = 256 * 1024
"""Bytes read from a file per chunk."""

Body: TypeAlias = "bytes | BinaryIO | AsyncIterable[bytes]"
"""What a half-close client sends: bytes, a binary file (read in chunks), or an async iterator of chunks."""


def send_body(transport: Any, body: BinaryIO | AsyncIterable[bytes]) -> Deferred[None]:
    """Write ``body`` to ``transport`` chunk by chunk; fire once all of it was handed to the transport.

    A file is read with ``read1`` (``read`` if it has none) in the reactor thread: a
    regular file, or a pipe such as standard input, not a slow device.
    Cancelling the Deferred stops sending.
    """
    return Deferred.fromCoroutine(_send(transport, body))


async def file_chunks(body: BinaryIO, limit: int | None = None) -> AsyncIterator[bytes]:
    """A binary file's chunks of up to :data:`CHUNK_SIZE` bytes, to its end or ``limit``
    bytes; ``read1`` when it has one (a pipe gives what it holds, without waiting for more)."""
    read = getattr(body, "read1", None) or body.read
    left = limit
    while left is None or left > 0:
        chunk = read(CHUNK_SIZE if left is None else min(CHUNK_SIZE, left))
        if not chunk:
            return
        if left is not None:
            left -= len(chunk)
        yield chunk


async def _send(transport: Any, body: BinaryIO | AsyncIterable[bytes]) -> None:
    writer = AnswerWriter(transport, _nothing)
    chunks = body if isinstance(body, AsyncIterable) else file_chunks(body)
    try:
        async for chunk in chunks:
            resumed = writer.write(as_answer(chunk))
            if resumed is not None:
                await resumed
    finally:
        writer.done()


def _nothing() -> None:
    """A paused upload is not counted anywhere."""

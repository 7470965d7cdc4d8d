"""Streaming handlers: the request body as an async iterator of chunks, the answer as one too.

A handler marked with :func:`streaming` is called as soon as its request begins, with
a :class:`StreamingRequest` whose :attr:`~StreamingRequest.body` is a :class:`Body`:
``async for chunk in request.body`` takes the chunks as they arrive.  It answers as
any handler does (bytes, a Deferred, a coroutine), or with an async iterator of
``bytes`` chunks (an ``async def`` generator), written with backpressure.

Why an async iterator and not a Twisted consumer (``IConsumer``)?  The handler contract
is "Deferreds and coroutines both accepted": a coroutine reads ``async for`` as plain
sequential code, its ``await`` *is* the backpressure (the next chunk is not read before
the handler asks for it), and its end and failure are the iteration's.  A consumer
would make every handler a small state machine with ``registerProducer`` and
``write`` callbacks, and push the backpressure onto it.  The protocol does the Twisted
part: it pauses and resumes the transport (its ``IPushProducer``) from the body's
buffer (:class:`~sockproto.core.halfclose_stream.StreamingRequest`), and registers a
push producer (:class:`AnswerWriter`) to pause the answer for a slow client.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from ..request import Request

__all__ = [
    "AnswerWriter",
    "Body",
    "BodySource",
    "BodyTruncated",
    "SizedAnswer",
    "StreamingRequest",
    "is_streaming",
    "streaming",
    "streaming_form",
]

_MARK = "__sockproto_streaming__"
_FORM = "__sockproto_streaming_form__"

F = TypeVar("F", bound=Callable[..., Any])


def streaming(handler: F) -> F:
    """Mark ``handler`` as streaming: it gets a :class:`StreamingRequest`, called at once.

    Usable as a decorator on a function, or called on a callable object.
    """
    setattr(handler, _MARK, True)
    return handler


def is_streaming(handler: object) -> bool:
    """Whether ``handler`` was marked with :func:`streaming`."""
    return getattr(handler, _MARK, False) is True


def streaming_form(handler: F) -> F:
    """The streaming variant of ``handler`` if it has one (the built-in ``sha256``), else ``handler``."""
    form: F = getattr(handler, _FORM, handler)
    return form


def offer_streaming_form(handler: Callable[..., Any], form: Callable[..., Any]) -> None:
    """Give ``handler`` a streaming variant, ``form``, for services that can stream."""
    setattr(handler, _FORM, streaming(form))


class BodyTruncated(ConnectionError):
    """The connection ended (or stalled past its timeout) before the request's body did."""


class BodySource(Protocol):
    """What a :class:`Body` reads from: a connection's sans-IO body state.

    :class:`~sockproto.core.halfclose_stream.StreamingRequest` (half-close) and
    :class:`~sockproto.core.frame_stream.FrameBody` (frame) are such states.
    """

    @property
    def ended(self) -> bool: ...
    @property
    def finished(self) -> bool: ...
    @property
    def paused(self) -> bool: ...
    @property
    def truncated(self) -> bool: ...
    def take(self) -> bytes | None: ...
    def resume_wanted(self) -> bool: ...


class Body:
    """The body of a streamed request: ``async for chunk in body`` (chunks of ``bytes``).

    Backed by the connection's body state (a :class:`BodySource`): taking a chunk may
    resume the transport's reading (``resume``).  Iterate it in a coroutine driven by
    Twisted (a handler's ``async def``).  A body cut short by the connection's end
    (frame service: the frame never completed) raises :class:`BodyTruncated`.

    :ivar received: body bytes taken so far.
    """

    __slots__ = ("_resume", "_state", "_waiter", "received")

    def __init__(self, state: BodySource, resume: Callable[[], None]) -> None:
        self._state = state
        self._resume = resume
        self._waiter: Deferred[bytes | None] | None = None
        self.received = 0

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        state = self._state
        chunk = state.take()
        if chunk is None:
            if state.ended or state.finished:
                raise self._end()
            waiter = self._waiter = Deferred()
            got = await waiter
            if got is None:
                raise self._end()
            chunk = got
        if state.paused and state.resume_wanted():
            self._resume()
        self.received += len(chunk)
        return chunk

    def _end(self) -> Exception:
        if self._state.truncated:
            return BodyTruncated(f"the connection ended after {self.received} bytes of the request body")
        return StopAsyncIteration()

    async def read(self) -> bytes:
        """The whole body, joined (for small bodies only: it holds all of it)."""
        return b"".join([chunk async for chunk in self])

    def wake(self) -> None:
        """Something arrived (a chunk, the end of file, a reset): hand it to a waiting ``__anext__``."""
        waiter = self._waiter
        if waiter is None:
            return
        state = self._state
        chunk = state.take()
        if chunk is None and not (state.ended or state.finished):
            return
        self._waiter = None
        waiter.callback(chunk)


class StreamingRequest(Request):
    """The request a streaming handler gets: :attr:`body` instead of a whole ``payload``.

    :ivar body: the :class:`Body`, to iterate once.
    :ivar payload: always ``b""``.
    """

    __slots__ = ("body",)
    body: Body


class SizedAnswer:
    """An answer whose length is known before its payload, which follows in chunks.

    A frame carries its length before its payload, so a frame handler that answers with
    an async iterator has it joined.  Answering with ``SizedAnswer(length, chunks)``
    instead, the header goes first and ``chunks`` (an async iterator of ``bytes``) are
    written as the client takes them: a slow client pauses the iteration, and memory
    stays bounded whatever the length.  The chunks must add up to ``length`` exactly,
    or the connection is reset (the frame cannot be completed).  Nothing else is sent
    on the connection meanwhile.  A half-close handler may return one too: its chunks
    are written as an async iterator's.

    :ivar length: the payload's length, in bytes.
    :ivar chunks: the payload.
    """

    __slots__ = ("chunks", "length")

    def __init__(self, length: int, chunks: AsyncIterable[bytes]) -> None:
        if length < 0:
            raise ValueError(f"length must be >= 0, not {length}")
        self.length = length
        self.chunks = chunks

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.chunks.__aiter__()


@implementer(IPushProducer)
class AnswerWriter:
    """Write an answer's chunks to a transport, pausing while the transport's buffer is full.

    Registered on the transport as a streaming producer: the transport pauses it once
    more than its ``bufferSize`` waits to be sent, and resumes it once sent.

    :param transport: what to write to.
    :param on_pause: called each time the transport pauses the answer (a counter).
    """

    def __init__(self, transport: Any, on_pause: Callable[[], None]) -> None:
        self.transport = transport
        self.on_pause = on_pause
        self.paused = False
        self._resumed: Deferred[None] | None = None
        transport.registerProducer(self, True)

    def write(self, chunk: bytes) -> Deferred[None] | None:
        """Write ``chunk``; return a Deferred to await if the transport paused us, else ``None``."""
        self.transport.write(chunk)
        if not self.paused:
            return None
        resumed = self._resumed = Deferred()
        return resumed

    def done(self) -> None:
        """The answer is complete: unregister from the transport."""
        self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self.paused = True
        self.on_pause()

    def resumeProducing(self) -> None:
        self.paused = False
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.callback(None)

    def stopProducing(self) -> None:
        """The connection is gone: the answer's coroutine is cancelled by the protocol."""
        self.paused = True

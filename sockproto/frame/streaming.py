"""The frame server for streaming handlers: large request frames in pieces, in bounded memory.

:class:`FrameStreamingProtocol` serves a handler marked with
:func:`~sockproto.serving.streaming.streaming`;
:class:`~sockproto.frame.server.FrameServerFactory` builds it for such a handler.  It
keeps every rule of :class:`~sockproto.frame.protocol.FrameServerProtocol` (PINGs,
errors, order, ``max_in_flight``, drain, PROXY header, limits) and changes how a
request frame reaches the handler:

- the handler is called as soon as the frame's header arrives, with a
  :class:`~sockproto.serving.streaming.StreamingRequest` whose ``body`` yields the
  payload as it is read, never joined (:class:`~sockproto.core.frame_stream.FrameBody`);
  past 1 MiB of body held on the connection, reading pauses until the handler has
  taken it (the client's ``send`` blocks);
- its answer (bytes, a Deferred, a coroutine; an async iterator of chunks is joined:
  a frame's length goes before its payload) or its error is sent once the frame's last
  byte is read: a handler that fails mid-body gets ERROR 4 after the rest of its
  frame is read and discarded, and the connection goes on serving;
- a :class:`~sockproto.serving.streaming.SizedAnswer` (a length, then chunks) is
  written in pieces instead: the header in its turn, then each chunk once the transport
  has room (a slow client pauses the handler's iterator), nothing else meanwhile; chunks
  that do not add up to the length reset the connection;
- ``handler_timeout`` counts from the frame's last byte; ``idle_timeout`` applies
  within a frame too: a frame that makes no progress for that long (a client stopped
  mid-body) resets the connection, and the handler's body raises
  :class:`~sockproto.serving.streaming.BodyTruncated`.
"""

from __future__ import annotations

from inspect import iscoroutine
from typing import Any, Final

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from ..core.frame_connection import ConnectionState, FrameServerConnection
from ..core.frame_stream import FrameBody
from ..request import Request
from ..serving.answering import HandlerTimeout, PendingWork, as_answer
from ..serving.streaming import Body, SizedAnswer, StreamingRequest
from ..serving.tls import request_type
from .protocol import FrameServerProtocol

__all__ = ["READ_SIZE", "FrameStreamingProtocol"]

READ_SIZE: Final = 256 * 1024
"""Bytes asked of the socket per read (Twisted's default is 64 KiB): fewer, larger pieces."""


class _Run:
    """One streamed request's handler run: its body reader and its handler timeout."""

    __slots__ = ("body", "deadline", "overran", "run")

    def __init__(self, body: Body) -> None:
        self.body = body
        self.run: Deferred[bytes | SizedAnswer] | None = None
        self.deadline: IDelayedCall | None = None
        self.overran = False

    def stop_deadline(self) -> None:
        deadline, self.deadline = self.deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()


class FrameStreamingProtocol(FrameServerProtocol):
    """Serve a streaming handler over one stream connection (same parameters as
    :class:`~sockproto.frame.protocol.FrameServerProtocol`)."""

    _body_paused = False  # whether reading was last seen paused for the bodies held (a counter's edge)
    _out_paused = False  # the transport's buffer is full (pauseProducing): a sized answer waits
    _room: Deferred[None] | None = None  # fired by resumeProducing, for a waiting sized answer
    _outgoing: dict[Request, SizedAnswer] | None = None  # sized answers whose header is not out yet

    def _connect(self, **streaming: Any) -> FrameServerConnection[Request]:
        """Make the connection's state, streaming request frames to the handler."""
        return super()._connect(
            streamed=self._stream_started, stream_type=request_type(self.transport, StreamingRequest)
        )

    def connectionMade(self) -> None:
        transport: Any = self.transport
        if hasattr(transport, "bufferSize"):
            transport.bufferSize = READ_SIZE
        super().connectionMade()

    # -- a streamed request -------------------------------------------------------------

    def _stream_started(self, request: Request, body: FrameBody) -> None:
        """The header of a request frame arrived: run the handler with its body to come."""
        assert isinstance(request, StreamingRequest)
        reader = Body(body, self._body_taken)
        record = _Run(reader)
        body.reader = record
        request.body = reader
        run: Deferred[bytes | SizedAnswer] = Deferred.fromCoroutine(self._run(request))
        record.run = run
        run.addErrback(self._overran, record)  # before the answer: a timeout is ERROR 6
        run.addBoth(self._run_over, record)
        pending = self._pending
        if pending is None:
            pending = self._pending = PendingWork()
        # the handler timeout counts from the frame's last byte (_flush), not from here
        self.settings.answering.track(run, pending, self._answered, request, timed=False)

    async def _run(self, request: StreamingRequest) -> bytes | SizedAnswer:
        result: Any = self.settings.handler(request)
        if isinstance(result, Deferred) or iscoroutine(result):
            result = await result
        if isinstance(result, SizedAnswer):
            return result  # its payload is written in pieces, after its header (_pump)
        if hasattr(result, "__aiter__"):  # joined: the frame's length is sent before its payload
            return b"".join([as_answer(chunk) async for chunk in result])
        return as_answer(result)

    def _overran(self, failure: Failure, record: _Run) -> Failure:
        if record.overran and failure.check(CancelledError):
            timeout = self.settings.handler_timeout
            assert timeout is not None
            return Failure(HandlerTimeout(timeout))
        return failure

    @staticmethod
    def _run_over(result: object, record: _Run) -> object:
        record.stop_deadline()
        return result

    def _time_handler(self, record: _Run) -> None:
        """The frame is complete: the handler has ``handler_timeout`` seconds from now."""
        timeout = self.settings.handler_timeout
        run = record.run
        if timeout is None or run is None or run.called or record.deadline is not None:
            return
        record.deadline = self._clock().callLater(timeout, self._handler_overran, record)

    def _handler_overran(self, record: _Run) -> None:
        record.deadline = None
        record.overran = True
        if record.run is not None:
            record.run.cancel()

    # -- sized answers: the payload in pieces ---------------------------------------------

    def _answered(self, result: Any, request: Request) -> None:
        """A streamed request's run ended: a sized answer's header is queued, the rest as usual."""
        if not isinstance(result, SizedAnswer):
            super()._answered(result, request)
            return
        conn = self._conn
        assert conn is not None
        if not conn.wants_answer(request):
            conn.abandon(request)
        else:
            conn.answer_sized(request, result.length)
            if self._outgoing is None:
                self._outgoing = {}
            self._outgoing[request] = result
        if not conn.serving:
            self._serve_backlog(conn)

    def _start_pumps(self, conn: FrameServerConnection[Request]) -> None:
        """The header of a sized answer went out: write its payload (once)."""
        outgoing = self._outgoing
        request = conn.sending
        if not outgoing or request not in outgoing:
            return
        sized = outgoing.pop(request)
        pump: Deferred[None] = Deferred.fromCoroutine(self._pump(conn, request, sized))
        if pump.called:
            return
        pending = self._pending
        if pending is None:
            pending = self._pending = PendingWork()
        pending.add(pump)  # cancelled with the connection, awaited by nothing else
        pump.addBoth(lambda result: pending.discard(pump))

    async def _pump(self, conn: FrameServerConnection[Request], request: object, sized: SizedAnswer) -> None:
        try:
            async for chunk in sized.chunks:
                data = as_answer(chunk)
                if not conn.answer_data(request, data):
                    raise ValueError(f"the answer gave more than the {sized.length} bytes it announced")
                self._flush(conn)
                if conn.state is ConnectionState.CLOSED:
                    return
                while self._out_paused:  # the client does not read: wait for room
                    self.settings.metrics.answers_paused += 1
                    room = self._room = Deferred()
                    await room
            if not conn.answer_end(request):
                raise ValueError(f"the answer gave fewer than the {sized.length} bytes it announced")
        except Exception:  # not CancelledError's GeneratorExit: a lost connection ends quietly
            failure = Failure()
            if conn.state is not ConnectionState.CLOSED:
                self.settings.answering.failed(failure, self.peer, ": connection reset")
                self.abort()
            return
        self._serve_backlog(conn)

    def pauseProducing(self) -> None:
        self._out_paused = True
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self._out_paused = False
        room, self._room = self._room, None
        super().resumeProducing()
        if room is not None:
            room.callback(None)

    # -- bytes in, backpressure -----------------------------------------------------------

    def _flush(self, conn: FrameServerConnection[Request]) -> None:
        """Wake the handlers whose bodies got bytes (or ended), then send and read as due."""
        self._wake_readers(conn)
        hold = conn.hold
        if hold is not None and hold.paused is not self._body_paused:
            self._body_paused = hold.paused
            if hold.paused:
                self.settings.metrics.reads_paused += 1
        super()._flush(conn)
        if self._outgoing:
            self._start_pumps(conn)

    def _wake_readers(self, conn: FrameServerConnection[Request]) -> None:
        """Wake the handlers whose bodies got bytes or ended; a complete frame's handler
        timeout starts."""
        for body in conn.fed_bodies():
            record: _Run = body.reader  # type: ignore[assignment]
            if body.complete and not body.truncated:
                self._time_handler(record)
            record.body.wake()

    def _body_taken(self) -> None:
        """A handler took enough of its body to resume reading."""
        conn = self._conn
        if conn is not None:  # once closed, flushing does nothing
            self._flush(conn)

    def timeoutConnection(self) -> None:
        """A frame stalled mid-body for ``idle_timeout`` seconds: reset; otherwise as usual."""
        conn = self._conn
        if conn is not None and conn.receiving_body and self._proxy is None:
            self._note(
                "request_timeout", LogLevel.info,
                "request from {peer} stalled mid-frame for {timeout:g} s: connection reset",
                timeout=self.settings.idle_timeout,
            )  # fmt: skip
            conn.time_out()
            self._wake_readers(conn)  # the handler sees BodyTruncated
            self.abort()
            return
        super().timeoutConnection()

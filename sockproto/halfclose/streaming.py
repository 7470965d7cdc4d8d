"""The half-close server for streaming handlers: the body in chunks, in bounded memory.

:class:`HalfCloseStreamingProtocol` serves a handler marked with
:func:`~sockproto.serving.streaming.streaming`; :class:`~sockproto.halfclose.server.HalfCloseServerFactory`
builds it for such a handler.  It keeps everything else of
:class:`~sockproto.halfclose.server.HalfCloseServerProtocol` (admission, half-close
check, PROXY header, request timeout, drain, resets) and changes when the handler
runs and how the bytes flow:

- the handler is called when the request begins (after the PROXY header, if any),
  with a :class:`~sockproto.serving.streaming.StreamingRequest`; the chunks read wait
  in a bounded buffer (:class:`~sockproto.core.halfclose_stream.StreamingRequest`):
  past its high-water mark the transport stops reading (``pauseProducing``), and
  resumes once the handler has taken it under the low-water mark;
- the answer (bytes, or an async iterator of chunks) is written through an
  :class:`~sockproto.serving.streaming.AnswerWriter`: the next chunk is pulled only
  once the transport has room;
- the request timeout covers the whole request, connect to half-close: a client that
  stalls mid-body is reset; ``handler_timeout`` counts from the half-close to the
  answer's end; a handler failure at any point resets the connection.
"""

from __future__ import annotations

from inspect import iscoroutine
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from ..core.halfclose import State
from ..core.halfclose_stream import StreamingRequest as StreamingState
from ..serving.answering import HandlerTimeout, as_answer
from ..serving.proxy import ProxyHeader
from ..serving.settings import StreamSettings
from ..serving.streaming import AnswerWriter, Body, StreamingRequest
from .server import _LOST, HalfCloseServerProtocol

__all__ = ["READ_SIZE", "HalfCloseStreamingProtocol"]

READ_SIZE = 256 * 1024
"""Bytes asked of the socket per read (Twisted's default is 64 KiB): fewer, larger chunks."""


class HalfCloseStreamingProtocol(HalfCloseServerProtocol):
    """Serve one streamed request: the handler takes the body as it arrives.

    Same parameters as :class:`~sockproto.halfclose.server.HalfCloseServerProtocol`;
    ``max_request`` may be ``None`` (no limit).

    :ivar exchange: the :class:`~sockproto.core.halfclose_stream.StreamingRequest`.
    :ivar body: the request's :class:`~sockproto.serving.streaming.Body`, once started.
    """

    exchange: StreamingState
    body: Body | None = None
    _writer: AnswerWriter | None = None
    _deadline: IDelayedCall | None = None  # the handler timeout, from the half-close on

    def _init_connection(self) -> None:
        self.exchange = StreamingState(self.settings.max_request)

    @classmethod
    def from_settings(cls, settings: StreamSettings) -> HalfCloseStreamingProtocol:
        """One protocol for one connection."""
        proto = cls.__new__(cls)
        proto.settings = settings  # type: ignore[assignment]
        proto._init_connection()
        return proto

    # -- IProtocol --------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        if hasattr(transport, "bufferSize"):
            transport.bufferSize = READ_SIZE
        super().connectionMade()
        if not self._uncounted:
            self._start()

    def _proxy_done(self, header: ProxyHeader, proxy: Any) -> None:
        super()._proxy_done(header, proxy)
        self._start()

    def dataReceived(self, data: bytes) -> None:
        if self._proxy is not None:
            rest = self._proxy_data(data)
            if not rest:
                return
            data = rest
        self.settings.metrics.bytes_in += len(data)
        exchange = self.exchange
        if not exchange.receive_data(data):
            self._note(
                "request_too_large", LogLevel.warn,
                "request from {peer} passed the {limit}-byte limit: connection reset", limit=self.max_request,
            )  # fmt: skip
            self._reset()
            return
        if exchange.pause_wanted():
            self.transport.pauseProducing()  # type: ignore[union-attr]
            self.settings.metrics.reads_paused += 1
        if self.body is not None:
            self.body.wake()

    def connectionLost(self, reason: Failure = _LOST) -> None:
        self._stop_deadline()
        super().connectionLost(reason)  # cancels the handler's run (self._pending)

    def readConnectionLost(self) -> None:
        """The client half-closed: the body ends; close now if the answer is out already."""
        if self._uncounted:
            if self._proxy is not None:
                self._proxy_eof()
                return
            self._count()
            self._start()
        if self._sweeping or self.timeOut is not None:
            self._no_timeout()
        exchange = self.exchange
        if exchange.state is State.RESET:
            self._abort()
            return
        exchange.eof_received()
        if exchange.state is State.ANSWERED:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        if self.body is not None:
            self.body.wake()
        timeout = self.settings.handler_timeout
        if timeout is not None and self._pending is not None:
            self._deadline = self._clock().callLater(timeout, self._handler_overran, timeout)

    def timeoutConnection(self) -> None:
        """The request did not end in time: reset, also if the answer is out but the body is not."""
        if self.exchange.state is State.ANSWERED and not self.exchange.eof and self._proxy is None:
            self._note("request_timeout", LogLevel.info, "no complete request from {peer}: connection reset")
            self._abort()
            return
        super().timeoutConnection()

    # -- the handler ------------------------------------------------------------------

    def _start(self) -> None:
        """Call the handler with the body to come; its run is the connection's pending work."""
        if self.body is not None or self.exchange.finished:
            return
        self.body = body = Body(self.exchange, self._resume_reading)
        request = StreamingRequest.__new__(StreamingRequest)
        request.kind = request.id = request.spec = None
        request.payload = b""
        request.header = ()
        request.peer = self.peer
        request.body = body
        run = Deferred.fromCoroutine(self._serve(request))
        if run.called:  # answered (or failed) at once, without waiting
            return
        settings = self.settings
        self._pending = run  # type: ignore[assignment]  # a Deferred of nothing: cancelled, never read
        # the handler timeout runs from the half-close (_deadline), not from here
        settings.answering.track(run, settings.pending, self._left, run, timed=False)

    def _left(self, result: object, run: Deferred[Any]) -> None:
        """The handler's run is over (it left the pending work already)."""
        if self._pending is run:
            self._pending = None

    async def _serve(self, request: StreamingRequest) -> None:
        try:
            result: Any = self.settings.handler(request)
            if isinstance(result, Deferred) or iscoroutine(result):
                result = await result
            if hasattr(result, "__aiter__"):
                await self._write_all(result)
            else:
                self._write(as_answer(result))
        except Exception:  # not GeneratorExit: a coroutine dropped unfinished closes quietly
            self._stop_deadline()
            self._failed(Failure())
            return
        self._stop_deadline()
        self._answered_stream()

    async def _write_all(self, chunks: Any) -> None:
        """Write an async iterator's chunks, each one only once the transport has room."""
        writer = self._writer = AnswerWriter(self.transport, self._answer_paused)
        async for chunk in chunks:
            if self.exchange.finished:
                break
            data = as_answer(chunk)
            self.settings.metrics.bytes_out += len(data)
            resumed = writer.write(data)
            if resumed is not None:
                await resumed

    def _write(self, data: bytes) -> None:
        self.settings.metrics.bytes_out += len(data)
        self.transport.write(data)  # type: ignore[union-attr]

    def _answered_stream(self) -> None:
        """The whole answer is written: close now (FIN), or once the rest of the body is read."""
        exchange = self.exchange
        if exchange.finished:
            return
        exchange.answer(b"")
        self.settings.metrics.answers += 1
        if self._writer is not None:
            self._writer.done()
        if exchange.eof:
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif exchange.resume_wanted():
            self._resume_reading()  # drop the rest of the body, then close at its end of file

    # -- backpressure and timeouts ----------------------------------------------------

    def _resume_reading(self) -> None:
        if not self._lost:
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def _answer_paused(self) -> None:
        self.settings.metrics.answers_paused += 1

    def _handler_overran(self, timeout: float) -> None:
        self._deadline = None
        self._failed(Failure(HandlerTimeout(timeout)))
        pending = self._pending
        if pending is not None:
            pending.cancel()

    def _stop_deadline(self) -> None:
        deadline = self._deadline
        if deadline is not None:
            self._deadline = None
            if deadline.active():
                deadline.cancel()

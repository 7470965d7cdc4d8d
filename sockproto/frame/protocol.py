"""The frame server's protocol: one stream connection, served over the sans-IO decoder.

See :mod:`sockproto.frame.server` for the behaviour; this module holds the protocol,
:mod:`sockproto.frame.server` its factory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from ..core.decoder import DEFAULT_MAX_PAYLOAD, FrameDecoder, Malformed, Oversized, UnexpectedKind
from ..core.header import SPF1, HeaderSpec
from ..core.spf1 import ErrorCode, Kind
from ..handlers import Handler
from ..request import Request
from ..serving.answering import HandlerTimeout, as_answer, call_handler, limit_time
from ..serving.logs import LogLimiter
from ..serving.metrics import ServiceMetrics
from ..serving.writing import write_now
from .answers import FrameAnswers

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "FrameServerProtocol"]

DEFAULT_MAX_IN_FLIGHT = 64
"""Unanswered requests allowed per connection before it stops being read."""

_REQUEST, _RESPONSE, _ERROR, _PING, _PONG = (int(k) for k in Kind)
_SERVED_KINDS = frozenset((_REQUEST, _PING))
_LOST = Failure(ConnectionDone())


class _Slot:
    """An answer owed in request order (headers without ids)."""

    __slots__ = ("done", "fatal", "frames")

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.done = False
        self.fatal = False


@implementer(IPushProducer, IHalfCloseableProtocol)
class FrameServerProtocol(FrameAnswers):
    """Serve ``handler`` over one stream connection.

    :param handler: called with a :class:`~sockproto.request.Request` per request frame.
    :param header: the wire header.
    :param max_payload: larger requests are refused (SPF/1: ERROR 2; no error
        channel: the connection is closed) and their payload skipped unread.
    :param max_in_flight: unanswered requests allowed before reading pauses.
    :param idle_timeout: seconds without a byte received (a PING is activity) and
        without an answer owed, after which the connection is closed; ``None``: never.
    :param handler_timeout: seconds an asynchronous handler has to answer; past that
        the request gets ERROR 6 (no error channel: the connection is closed) and the
        handler's Deferred is cancelled.  ``None``: no limit.
    :param clock: schedules both timeouts (the global reactor by default).
    :param metrics: the counters to add to (the factory's; a new one by default).
    :param limiter: rate-limits this connection's log events (the factory's).
    """

    _log = Logger()
    kind = "frame"

    def __init__(
        self,
        handler: Handler,
        *,
        header: HeaderSpec = SPF1,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        idle_timeout: float | None = None,
        handler_timeout: float | None = None,
        clock: IReactorTime | None = None,
        metrics: ServiceMetrics | None = None,
        limiter: LogLimiter | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        super().__init__(clock=clock, metrics=metrics, limiter=limiter)
        self.handler = handler
        self.header = header
        self.max_in_flight = max_in_flight
        if max_payload < 0:
            raise ValueError(f"max_payload must be >= 0, not {max_payload}")
        self.max_payload = min(max_payload, header.max_payload)
        self._ordered = not header.has_id  # answers must follow request order
        self.idle_timeout = idle_timeout
        self.handler_timeout = handler_timeout
        self._init_connection()

    @staticmethod
    def settings_of(
        handler: Handler,
        header: HeaderSpec,
        max_payload: int,
        max_in_flight: int,
        idle_timeout: float | None,
        handler_timeout: float | None,
    ) -> dict[str, Any]:
        """The settings :meth:`__init__` takes, as the attributes it would set.

        A factory makes them class attributes of one subclass
        (:meth:`~sockproto.serving.stream.StreamServerProtocol.configured`) shared by its
        connections; the arguments are those of :meth:`__init__`, already checked.
        """
        return {
            "handler": handler,
            "header": header,
            "max_payload": min(max_payload, header.max_payload),
            "max_in_flight": max_in_flight,
            "_ordered": not header.has_id,
            "idle_timeout": idle_timeout,
            "handler_timeout": handler_timeout,
        }

    def _init_connection(self) -> None:
        """Set the state of one connection (everything but the settings)."""
        self._decoder: FrameDecoder[Request] | None = None  # made by the first read
        # An idle connection should cost little: the backlog and the queue are the shared
        # empty tuple until used (an empty deque is 760 bytes, an empty list 56).
        self._backlog: list[Any] | tuple[()] = ()  # decoded events held back by flow control
        self._queue: list[_Slot] | tuple[()] = ()  # ordered mode: answers owed, oldest first
        self._pending: dict[Deferred[bytes], None] | None = None  # handlers still running
        self._batch: list[bytes] | None = None  # the answers of the read being served
        self._write_paused = False
        self._read_paused = False
        self._stopping = False  # no more requests are served; close once answers are out
        self._draining = False  # shutting down: serve what was received, then close
        self._eof = False  # the client shut down its write side
        self._closed = False

    @property
    def _between_frames(self) -> bool:
        """Whether no frame is partly received."""
        return self._decoder is None or self._decoder.idle

    @property
    def in_flight(self) -> int:
        """Requests received whose answer is not written yet."""
        return len(self._queue) if self._ordered else len(self._pending or ())

    # -- IProtocol --------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport  # ITransport, IConsumer and IPushProducer
        self._track_open()
        transport.registerProducer(self, True)
        if self.idle_timeout is not None:
            self.setTimeout(self.idle_timeout)  # type: ignore[no-untyped-call]

    def dataReceived(self, data: bytes) -> None:
        if self._stopping:
            return
        self.metrics.bytes_in += len(data)
        decoder = self._decoder
        if decoder is None:  # not before: an idle connection should cost little
            decoder = self._decoder = FrameDecoder(
                self.header, max_payload=self.max_payload, accept_kinds=_SERVED_KINDS, frame_type=Request
            )
        events = decoder.feed(data)
        if events and self.timeOut is not None:
            self.resetTimeout()  # type: ignore[no-untyped-call]  # a whole frame is activity
        if self._backlog or self._blocked():
            self._hold_back(events)
            self._update_reading()
        else:
            self._serve(events)

    def connectionLost(self, reason: Failure = _LOST) -> None:
        self._closed = self._stopping = True
        self._backlog = self._queue = ()
        pending, self._pending = self._pending or {}, None
        for d in pending:
            d.cancel()  # _answered counts it abandoned
        self._track_close(reason)

    # -- IHalfCloseableProtocol: a client may send, shut down its write side, then read --

    def readConnectionLost(self) -> None:
        """The client sent all it will (``shutdown(SHUT_WR)``): answer it, then close.

        Without this, Twisted would end the whole connection at the client's FIN and
        drop the answers still due.  A frame left incomplete is dropped.
        """
        self._eof = self._draining = True
        self._update_reading()

    def writeConnectionLost(self) -> None:
        """Not used: the server closes the whole connection, never only its write side."""

    # -- IPushProducer: the transport's write buffer is full, or drained --------------

    def pauseProducing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resumeProducing(self) -> None:
        self._write_paused = False
        self._drain()

    def stopProducing(self) -> None:
        self._stopping = True

    # -- timeouts and shutdown --------------------------------------------------------

    def timeoutConnection(self) -> None:
        """No whole frame for ``idle_timeout`` seconds: close, unless answers are owed.

        A close still not done one timeout later (a client that does not read what is
        written, so the write buffer never empties) becomes a reset.
        """
        if self._closed:
            self._note(
                "idle_timeout", LogLevel.info, "resetting the connection from {peer}: it does not read"
            )
            self.abort()
            return
        if not (self._pending or self._queue or self._backlog):
            self._note(
                "idle_timeout", LogLevel.info, "closing {peer}: no frame in {timeout:g} s",
                timeout=self.idle_timeout,
            )  # fmt: skip
            self._stop()
            self._flush([])
        self.setTimeout(self.idle_timeout)  # type: ignore[no-untyped-call]  # busy, or closing

    def drain(self) -> None:
        """Shut down gracefully: serve what was received, then close.

        Reading stops, except while a frame is partly received: a request whose first
        bytes arrived is completed and answered.  Every request received is answered;
        the connection closes once nothing more is owed (at once if nothing is).
        """
        self._draining = True
        self._update_reading()

    def _drained(self) -> bool:
        """Whether a draining connection owes nothing and holds no partial frame."""
        return not (self._pending or self._queue or self._backlog) and (self._between_frames or self._eof)

    # -- serving ----------------------------------------------------------------------

    def _serve(self, events: list[Any]) -> None:
        """Answer ``events`` in order; the answers due now go out in one write."""
        out: list[bytes] = []
        self._batch = out
        write = out.append
        pack = self.header.pack_frame_header
        handler = self.handler
        peer = self.peer
        queue = self._queue
        max_answer = self.header.max_payload
        bare_pack = self.header.pack_bare
        pings = slow = 0  # counted per read, in locals: no per-frame attribute work
        rest: Iterator[Any] | None = iter(events)
        assert rest is not None
        try:
            for event in rest:
                if type(event) is Request:
                    if event.kind == _PING:
                        pings += 1
                        pong = [pack(_PONG, event.id or 0, len(event.payload)), event.payload]
                        if queue:
                            self._deliver(pong, False, None, out)
                        else:
                            out += pong
                        continue
                    event.peer = peer
                    try:
                        result: Any = handler(event)
                    except Exception:
                        slow += 1
                        self._deliver(*self._failed(event, Failure()), None, out)
                    else:
                        if type(result) is bytes and not queue and len(result) <= max_answer:
                            if bare_pack is not None:  # a bare length prefix: one C call
                                write(bare_pack(len(result)))
                            else:
                                write(pack(_RESPONSE, event.id, len(result)))
                            write(result)
                            continue
                        slow += 1
                        self._answer_later(event, result, out)
                        queue = self._queue  # it may have been created
                    if self._blocked() or self._stopping:
                        break
                else:
                    slow += 1
                    if type(event) is Malformed:
                        self._malformed(event, out)
                    else:
                        self._skipped(event, out)
                if self._stopping:
                    break
            else:
                rest = None
        finally:
            self._batch = None
        served = len(events)
        if rest is not None:
            left = list(rest)
            served -= len(left)
            if not self._stopping:
                self._hold_back(left)
        # Every frame served but the PINGs is a request; those not answered at once
        # (``slow``) count their answer or error where it is made.
        metrics = self.metrics
        metrics.requests += served - pings
        metrics.answers += served - pings - slow
        if pings:
            metrics.pings += pings
        self._flush(out)
        self._update_reading()

    def _answer_later(self, request: Request, result: Any, out: list[bytes]) -> None:
        """Deal with anything but a plain bytes answer that can be written at once."""
        if not isinstance(result, Deferred):
            try:
                result = call_handler(lambda _: result, request)  # coroutine, bytes-like
            except TypeError:
                self._deliver(*self._failed(request, Failure()), None, out)
                return
        if isinstance(result, bytes):
            self._deliver(*self._framed(request, result), None, out)
            return
        slot = _Slot() if self._ordered else None
        if slot is not None:
            self._owe(slot)
        if self._pending is None:
            self._pending = {}
        self._pending[result] = None
        self.metrics.in_flight += 1
        result.addCallback(as_answer)
        if self.handler_timeout is not None:
            limit_time(result, self.handler_timeout, self._clock())
        result.addBoth(self._answered, request, slot, result)

    def _answered(
        self, result: bytes | Failure, request: Request, slot: _Slot | None, d: Deferred[bytes]
    ) -> None:
        """Write (or queue) an asynchronous answer when its handler is done."""
        if self._pending is not None:
            self._pending.pop(d, None)
        self.metrics.in_flight -= 1
        if self._closed or (self._stopping and slot is None):
            self.metrics.abandoned += 1
            return None
        if not isinstance(result, Failure):
            frames, fatal = self._framed(request, result)
        elif result.check(HandlerTimeout):
            frames, fatal = self._timed_out(request, result)
        else:
            frames, fatal = self._failed(request, result)
        if self._batch is not None:  # the Deferred fired inside handler(): keep order
            self._deliver(frames, fatal, slot, self._batch)
            return None
        out: list[bytes] = []
        self._deliver(frames, fatal, slot, out)
        self._flush(out)
        self._drain()
        return None

    def _skipped(self, event: Oversized | UnexpectedKind, out: list[bytes]) -> None:
        """Answer a frame whose payload the decoder discards, then go on."""
        if type(event) is Oversized:
            code = ErrorCode.TOO_LARGE
            what = f"payload of {event.length} bytes is over the {self.max_payload}-byte limit"
        else:
            code = ErrorCode.UNEXPECTED_KIND
            what = f"frame kind {event.kind} is not a request"
        self._note("frame_refused", LogLevel.warn, "refused a frame from {peer}: {what}", what=what)
        self._deliver(*self._error(event.id, code, what), None, out)

    def _malformed(self, event: Malformed, out: list[bytes]) -> None:
        """A header that cannot be valid: say so (id 0) and close; a stream cannot resync."""
        reason = event.reason
        self._note("protocol_error", LogLevel.warn, "protocol error from {peer}: {reason}", reason=reason)
        frames, _ = self._error(0, ErrorCode.PROTOCOL_ERROR, event.reason)
        self._deliver(frames, True, None, out)

    def _deliver(self, frames: list[bytes], fatal: bool, slot: _Slot | None, out: list[bytes]) -> None:
        """Send ``frames`` now, or in request order; ``fatal`` closes the connection after."""
        if fatal:
            self._stop()
        if slot is None:
            if not self._queue:
                out += frames
                return
            slot = _Slot()
            self._owe(slot)
        slot.frames = frames
        slot.fatal = fatal
        slot.done = True
        queue = self._queue
        while queue and queue[0].done:
            head = queue.pop(0)
            out += head.frames
            if head.fatal:
                self._queue = queue = ()

    def _hold_back(self, events: list[Any]) -> None:
        """Keep ``events`` until flow control lets them be served."""
        if self._backlog:
            self._backlog.extend(events)
        else:
            self._backlog = list(events)

    def _owe(self, slot: _Slot) -> None:
        """Queue an answer owed in request order."""
        if self._queue:
            self._queue.append(slot)
        else:
            self._queue = [slot]

    def _flush(self, out: list[bytes]) -> None:
        """Write ``out`` in one call; close if stopping and nothing more is owed."""
        if self._closed:
            return
        assert self.transport is not None
        if out:
            data = b"".join(out)
            self.metrics.bytes_out += len(data)
            write_now(self.transport, data)
        if self._stopping and not self._queue:
            self._closed = True
            self.transport.loseConnection()

    def _stop(self) -> None:
        """Serve no more requests: the stream is broken or the header has no error channel."""
        self._stopping = True
        self._backlog = ()

    # -- flow control -----------------------------------------------------------------

    def _blocked(self) -> bool:
        return self._write_paused or self.in_flight >= self.max_in_flight

    def _update_reading(self) -> None:
        """Pause or resume reading the transport to match the flow-control state."""
        pause = self._stopping or self._blocked() or bool(self._backlog)
        if self._draining and not self._closed and (self._between_frames or self._eof):
            pause = True
            if self._drained():
                self._stopping = True
                self._flush([])
                return
        if pause != self._read_paused and not self._closed:
            transport: Any = self.transport  # an IPushProducer too: pausing stops reading
            self._read_paused = pause
            if pause:
                transport.pauseProducing()
            else:
                transport.resumeProducing()

    def _drain(self) -> None:
        """Serve the events held back by flow control, then read again if allowed."""
        while self._backlog and not self._blocked() and not self._stopping:
            events, self._backlog = list(self._backlog), ()
            self._serve(events)
        self._update_reading()

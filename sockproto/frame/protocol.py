"""The frame server's protocol: a thin Twisted adapter over the sans-IO connection.

The rules (ordering, PING, errors, flow control, drain, close) are
:class:`~sockproto.core.frame_connection.FrameServerConnection`'s; this module gives it
the transport's bytes and pauses, calls the handler, runs asynchronous answers through
the service's :class:`~sockproto.serving.answering.Answering`, and times connections out.
See :mod:`sockproto.frame.server` for the behaviour.
"""

from __future__ import annotations

from typing import Any, Final

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IPushProducer, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from ..core.decoder import DEFAULT_MAX_PAYLOAD
from ..core.frame_connection import ConnectionState, FrameServerConnection
from ..core.header import SPF1, HeaderSpec
from ..handlers import Handler
from ..request import Request
from ..serving.answering import PendingWork
from ..serving.logs import LogLimiter
from ..serving.metrics import ServiceMetrics
from ..serving.proxy import ProxyHeader, ProxySettings
from ..serving.stream import StreamServerProtocol
from ..serving.tls import request_type
from ..serving.writing import write_now
from .settings import DEFAULT_MAX_IN_FLIGHT, FrameSettings

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "FrameServerProtocol"]

_LOST = Failure(ConnectionDone())
_CLOSED: Final = ConnectionState.CLOSED

# how the connection's reports are logged: category -> (level, format, field)
_REPORTS: Final = {
    "frame_refused": (LogLevel.warn, "refused a frame from {peer}: {what}", "what"),
    "protocol_error": (LogLevel.warn, "protocol error from {peer}: {reason}", "reason"),
    "answer_too_large": (LogLevel.error, "{message} (request from {peer})", "message"),
}


@implementer(IPushProducer, IHalfCloseableProtocol)
class FrameServerProtocol(StreamServerProtocol):
    """Serve ``handler`` over one stream connection.

    Built by a :class:`~sockproto.frame.server.FrameServerFactory` (which shares its
    :class:`~sockproto.frame.settings.FrameSettings`), or directly with these arguments:

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
    :param metrics: the counters to add to (a new one by default).
    :param limiter: rate-limits this connection's log events (a new one by default).
    :param proxy: the connection starts with a PROXY header (see
        :class:`~sockproto.serving.proxy.ProxyHeaderState`); ``None``: it does not.
    """

    _log = Logger()
    kind = "frame"
    settings: FrameSettings
    # One connection's state; class defaults, so that an idle connection stores neither.
    _conn: FrameServerConnection[Request] | None = None  # made by the first input
    _pending: PendingWork | None = None  # handler calls running, made by the first

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
        proxy: ProxySettings | None = None,
    ) -> None:
        self.settings = FrameSettings(
            **self.own_settings(clock, metrics, limiter),
            handler=handler,
            handler_timeout=handler_timeout,
            header=header,
            max_payload=max_payload,
            max_in_flight=max_in_flight,
            idle_timeout=idle_timeout,
            proxy=proxy,
        )
        self._init_connection()

    # -- the settings, by their usual names -------------------------------------------

    @property
    def header(self) -> HeaderSpec:
        """The wire header."""
        return self.settings.header

    @property
    def max_payload(self) -> int:
        """The largest request accepted."""
        return self.settings.max_payload

    @property
    def max_in_flight(self) -> int:
        """Unanswered requests allowed before reading pauses."""
        return self.settings.max_in_flight

    @property
    def idle_timeout(self) -> float | None:
        """Seconds a connection may stay without a whole frame and nothing owed."""
        return self.settings.idle_timeout

    @property
    def in_flight(self) -> int:
        """Requests received whose answer is not written yet."""
        conn = self._conn
        return 0 if conn is None else conn.in_flight

    def _connect(self, **streaming: Any) -> FrameServerConnection[Request]:
        """Make the connection's state (at its first input: an idle connection costs little).

        ``streaming``: the connection's streaming arguments (``streamed``, ``stream_type``:
        see :mod:`sockproto.frame.streaming`, whose protocol passes them).
        """
        settings = self.settings
        conn = self._conn = FrameServerConnection(
            settings.header,
            max_payload=settings.max_payload,
            max_in_flight=settings.max_in_flight,
            counters=settings.metrics,
            frame_type=request_type(self.transport),  # TLS: carries the peer's certificate
            peer=self.peer,
            report=self._report,
            **streaming,
        )
        tracker = settings.tracker
        if tracker is not None and tracker.failing_checks:
            conn.refuse_pings = True
        return conn

    def fail_health_checks(self) -> None:
        """The service is about to stop: PINGs get ERROR 5 from now on, requests are still served."""
        conn = self._conn
        if conn is not None:
            conn.refuse_pings = True

    # -- IProtocol --------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport  # ITransport, IConsumer and IPushProducer
        self._track_open()
        transport.registerProducer(self, True)
        proxy = self.settings.proxy
        if proxy is not None:
            self._proxy_begin(proxy)  # the idle timeout starts after the header
            return
        idle_timeout = self.settings.idle_timeout
        if idle_timeout is not None:
            self.setTimeout(idle_timeout)  # type: ignore[no-untyped-call]

    def dataReceived(self, data: bytes) -> None:
        if self._proxy is not None:  # the PROXY_HEADER state: no byte reaches the decoder before it ends
            rest = self._proxy_data(data)
            if not rest:
                return
            data = rest
        conn = self._conn
        if conn is None:
            conn = self._connect()
        if conn.serve(data, self.settings.handler, self._later) and self.timeOut is not None:
            self.resetTimeout()  # type: ignore[no-untyped-call]  # a whole frame is activity
        self._flush(conn)

    def _proxy_done(self, header: ProxyHeader, proxy: IAddress | None) -> None:
        """The PROXY header is parsed: requests now carry its source; the idle timeout starts."""
        super()._proxy_done(header, proxy)
        if self._conn is not None:  # made early by a pause: give it the peer from now on
            self._conn.peer = self.peer
        self.setTimeout(self.settings.idle_timeout)  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure = _LOST) -> None:
        if self._conn is not None:
            self._conn.closed()
        if self._pending is not None:
            self._pending.cancel_all()  # each is counted abandoned by _answered
        self._track_close(reason)

    # -- IHalfCloseableProtocol: a client may send, shut down its write side, then read --

    def readConnectionLost(self) -> None:
        """The client sent all it will (``shutdown(SHUT_WR)``): answer it, then close.

        Without this, Twisted would end the whole connection at the client's FIN and
        drop the answers still due.  A frame left incomplete is dropped.  Before the
        end of a PROXY header, the connection is reset.
        """
        if self._proxy is not None:
            self._proxy_eof()
            return
        conn = self._conn or self._connect()
        conn.eof_received()
        self._flush(conn)

    def writeConnectionLost(self) -> None:
        """Not used: the server closes the whole connection, never only its write side."""

    # -- IPushProducer: the transport's write buffer is full, or drained --------------

    def pauseProducing(self) -> None:
        conn = self._conn or self._connect()
        conn.pause_writing()
        self._flush(conn)

    def resumeProducing(self) -> None:
        conn = self._conn or self._connect()
        conn.resume_writing()
        self._serve_backlog(conn)

    def stopProducing(self) -> None:
        (self._conn or self._connect()).stop()

    # -- handler answers --------------------------------------------------------------

    def _later(self, request: Request, result: object, exc: Exception | None) -> None:
        """Answer a request whose handler raised, or returned anything but plain bytes."""
        conn = self._conn
        assert conn is not None
        answering = self.settings.answering
        if exc is None:
            pending = self._pending
            if pending is None:
                pending = self._pending = PendingWork()
            try:
                answer = answering.start(result, pending, self._answered, request)
            except TypeError as error:  # a synchronous answer that is not bytes-like
                exc = error
            else:
                if type(answer) is bytes:
                    conn.answer(request, answer)
                return
        conn.fail(request, *answering.failed(Failure(exc), self.peer))

    def _answered(self, result: bytes | Failure, request: Request) -> None:
        """An asynchronous answer is ready (or failed, timed out, was cancelled)."""
        conn = self._conn
        assert conn is not None
        if type(result) is bytes:
            conn.answer(request, result)
        elif not conn.wants_answer(request):
            conn.abandon(request)
        else:
            assert isinstance(result, Failure)
            conn.fail(request, *self.settings.answering.failed(result, self.peer))
        if not conn.serving:  # else it is part of the batch being served
            self._serve_backlog(conn)

    def _report(self, category: str, message: str) -> None:
        """Log what the connection reports, within the service's log rate."""
        level, fmt, name = _REPORTS[category]
        self._note(category, level, fmt, **{name: message})

    # -- sending and flow control -----------------------------------------------------

    def _serve_backlog(self, conn: FrameServerConnection[Request]) -> None:
        """Serve the requests flow control held back, then send and read as due."""
        conn.serve_backlog(self.settings.handler, self._later)
        self._flush(conn)

    def _flush(self, conn: FrameServerConnection[Request]) -> None:
        """Send what is due; close if the connection must; pause or resume reading."""
        data = conn.data_to_send()
        transport: Any = self.transport  # an IPushProducer too: pausing stops reading
        if data:
            write_now(transport, data)
        change = conn.reading_change()  # before closing: nothing is read after that
        if change is not None:
            if change:
                transport.resumeProducing()
            else:
                transport.pauseProducing()
        if conn.must_close:
            conn.closed()
            transport.loseConnection()

    # -- timeouts and shutdown --------------------------------------------------------

    def timeoutConnection(self) -> None:
        """No whole frame for ``idle_timeout`` seconds: close, unless answers are owed.

        A close still not done one timeout later (a client that does not read what is
        written, so the write buffer never empties) becomes a reset.  Before the end of
        a PROXY header, the PROXY timeout passed: the connection is reset.
        """
        proxy = self.settings.proxy
        if self._proxy is not None and proxy is not None:
            self._proxy_timed_out(proxy.timeout)
            return
        conn = self._conn or self._connect()
        if conn.state is _CLOSED:
            self._note(
                "idle_timeout", LogLevel.info, "resetting the connection from {peer}: it does not read"
            )
            self.abort()
            return
        if conn.time_out():
            self._note(
                "idle_timeout", LogLevel.info, "closing {peer}: no frame in {timeout:g} s",
                timeout=self.settings.idle_timeout,
            )  # fmt: skip
            self._flush(conn)
        self.setTimeout(self.settings.idle_timeout)  # type: ignore[no-untyped-call]  # busy, or closing

    def drain(self) -> None:
        """Shut down gracefully: serve what was received, then close.

        Reading stops, except while a frame is partly received: a request whose first
        bytes arrived is completed and answered.  Every request received is answered;
        the connection closes once nothing more is owed (at once if nothing is).
        Before the end of a PROXY header, it closes at once.  A connection from which
        nothing was read yet reads on for
        :data:`~sockproto.serving.stream.FIRST_READ_GRACE` first: its request may be
        in the socket's buffer already.
        """
        if self._proxy is not None:
            self._proxy_drop(None, "", reset=False)
            return
        if self._conn is None and self._drain_after_grace():
            return
        conn = self._conn or self._connect()
        conn.start_drain()
        self._flush(conn)

"""The half-close server: one request per connection, ended by the client's ``shutdown(SHUT_WR)``.

The client sends its whole request and shuts down its write side; the server reads
to end of file (:meth:`~HalfCloseServerProtocol.readConnectionLost`), runs the
handler, writes the answer and closes the connection (FIN).  No framing is needed in
either direction.

A request that cannot be answered never looks like an empty answer: the connection
is *reset* (:meth:`~twisted.internet.interfaces.ITCPTransport.abortConnection`) when
the request passes ``max_request`` bytes, when the handler fails, and when the whole
request has not arrived ``request_timeout`` seconds after connecting.  (On a UNIX
socket the kernel turns an abort into a reset only while the client is still sending;
after the whole request was read, the client sees a plain end of file.)

Limits: ``max_connections`` per service (a connection over it is reset at once),
``handler_timeout`` per request (reset, the handler's Deferred cancelled).  At
shutdown, see :meth:`HalfCloseServerProtocol.drain`.

Only transports that deliver the peer's half-close can serve this protocol:
``tcp:``, ``tcp6:``, ``unix:`` (and ``systemd:`` sockets of those kinds).  Twisted's
TLS layer has no half-close (twisted#5341).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from ..core.spf1 import ErrorCode
from ..handlers import Handler
from ..request import Request
from ..serving.answering import HandlerTimeout, call_handler, limit_time
from ..serving.logs import LogLimiter
from ..serving.metrics import ServiceMetrics
from ..serving.stream import StreamServerFactory, StreamServerProtocol

__all__ = [
    "DEFAULT_MAX_REQUEST",
    "DEFAULT_REQUEST_TIMEOUT",
    "HalfCloseServerFactory",
    "HalfCloseServerProtocol",
]

DEFAULT_MAX_REQUEST = 1024 * 1024
"""The largest request accepted by default, in bytes (1 MiB)."""

DEFAULT_REQUEST_TIMEOUT = 30.0
"""Seconds a client has, from connecting, to send its whole request and half-close."""

_LOST = Failure(ConnectionDone())


@implementer(IHalfCloseableProtocol)
class HalfCloseServerProtocol(StreamServerProtocol):
    """Read one request to end of file, answer it with ``handler``, close.

    :param handler: called with a :class:`~sockproto.request.Request` (``id``,
        ``kind`` and ``header`` empty) once the client has half-closed.
    :param max_request: the connection is reset as soon as the request passes this
        many bytes.
    :param request_timeout: seconds from connecting until the client's half-close;
        the connection is reset if the request is not complete by then.  ``None``
        disables the limit.
    :param handler_timeout: seconds an asynchronous handler has to answer; past that
        the connection is reset and the handler's Deferred cancelled.  ``None``: no limit.
    :param clock: the reactor used for the timeouts (the global reactor by default).
    :param metrics: the counters to add to (the factory's; a new one by default).
    :param limiter: rate-limits this connection's log events (the factory's).

    :ivar peer: the client's address, set when the connection is made.
    """

    _log = Logger()
    kind = "halfclose"

    # The state every connection starts in: class attributes, set per instance only
    # when they change (a connection's setup is on the hot path of this service).
    _received = 0  # request bytes so far
    _pending: Deferred[bytes] | None = None  # the handler's answer, if asynchronous
    _ending = False  # the connection is being closed or reset by us
    _lost = False

    def __init__(
        self,
        handler: Handler,
        *,
        max_request: int = DEFAULT_MAX_REQUEST,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        handler_timeout: float | None = None,
        clock: IReactorTime | None = None,
        metrics: ServiceMetrics | None = None,
        limiter: LogLimiter | None = None,
    ) -> None:
        super().__init__(clock=clock, metrics=metrics, limiter=limiter)
        self.handler = handler
        self.max_request = max_request
        self.request_timeout = request_timeout
        self.handler_timeout = handler_timeout
        self._chunks: list[bytes] | None = []  # None once the request is complete or refused

    # -- IProtocol --------------------------------------------------------------------

    def connectionMade(self) -> None:
        self._track_open()
        self.metrics.requests += 1  # one request per connection, whatever becomes of it
        if self.request_timeout is not None:
            self._time_out_in(self.request_timeout)

    def dataReceived(self, data: bytes) -> None:
        chunks = self._chunks
        if chunks is None:
            return
        received = self._received = self._received + len(data)
        self.metrics.bytes_in += len(data)
        if received > self.max_request:
            self._chunks = None
            self._note(
                "request_too_large", LogLevel.warn,
                "request from {peer} passed the {limit}-byte limit: connection reset", limit=self.max_request,
            )  # fmt: skip
            self._reset(ErrorCode.TOO_LARGE)
            return
        chunks.append(data)

    def connectionLost(self, reason: Failure = _LOST) -> None:
        if not self._ending:
            self.metrics.abandoned += 1  # the client went away before its answer
        self._lost = self._ending = True
        self._chunks = None
        self._track_close(reason)
        pending = self._pending
        if pending is not None:
            self._pending = None
            pending.cancel()

    # -- IHalfCloseableProtocol -------------------------------------------------------

    def readConnectionLost(self) -> None:
        """The client half-closed: the request is complete; answer it, then close.

        Twisted stops reading but keeps the connection open: from here on every path
        ends it (answer and FIN, or reset), or the socket would leak.
        """
        self._no_timeout()
        chunks, self._chunks = self._chunks, None
        if chunks is None or self._ending:  # refused already: the reset is under way
            self._reset(None)
            return
        request = Request(None, None, b"".join(chunks), (), None, self.peer)
        try:
            result: Any = self.handler(request)
            # bytes is the common case; anything else (a Deferred, a coroutine, a
            # bytearray) goes through call_handler, which checks it and makes it an answer
            answer = result if type(result) is bytes else call_handler(lambda _: result, request)
        except Exception:
            self._failed(Failure())
            return
        if isinstance(answer, bytes):  # _answer(answer), inlined: the path of every request
            self._ending = True
            metrics = self.metrics
            metrics.answers += 1
            metrics.bytes_out += len(answer)
            transport: Any = self.transport
            transport.write(answer)
            transport.loseConnection()
            return
        self._pending = answer
        self.metrics.in_flight += 1
        if self.handler_timeout is not None:
            limit_time(answer, self.handler_timeout, self._clock())
        answer.addCallbacks(self._answered, self._failed)

    def writeConnectionLost(self) -> None:
        """Not used: the server never half-closes its own side."""

    # -- timeouts and shutdown --------------------------------------------------------

    def timeoutConnection(self) -> None:
        """The whole request has not arrived in time: reset the connection."""
        self._chunks = None
        self._note(
            "request_timeout", LogLevel.info,
            "no complete request from {peer} within {timeout:g} s: connection reset",
            timeout=self.request_timeout,
        )  # fmt: skip
        self._reset(ErrorCode.TIMEOUT)

    def drain(self) -> None:
        """Shut down gracefully: a connection that has sent nothing is reset at once.

        One whose request is arriving, or whose handler runs, goes on as usual (its
        answer, then FIN) within the drain's deadline and the request timeout.
        """
        if self._received == 0 and self._chunks is not None and not self._ending:
            self._chunks = None
            self._reset(None)
            self.metrics.abandoned += 1

    # -- internals --------------------------------------------------------------------

    def _answered(self, answer: bytes) -> None:
        self._pending = None
        self.metrics.in_flight -= 1
        if not self._lost:
            self._answer(answer)

    def _answer(self, answer: bytes) -> None:
        """Write the answer, then close cleanly (FIN once it is flushed)."""
        assert self.transport is not None
        self._ending = True
        metrics = self.metrics
        metrics.answers += 1
        metrics.bytes_out += len(answer)
        self.transport.write(answer)
        self.transport.loseConnection()

    def _failed(self, failure: Failure) -> None:
        """The handler failed or overran: log it and reset (never an empty answer)."""
        if self._pending is not None:
            self._pending = None
            self.metrics.in_flight -= 1
        if self._lost and failure.check(CancelledError):
            return None  # cancelled by connectionLost: nobody to tell
        if failure.check(HandlerTimeout):
            self._note(
                "handler_timeout", LogLevel.warn, "request from {peer}: {message}: connection reset",
                message=failure.getErrorMessage(),
            )  # fmt: skip
            self._reset(ErrorCode.TIMEOUT)
            return None
        self.limiter.failure(
            self._log, "handler_failed", "handler {handler!r} failed for {peer}: connection reset", failure,
            handler=self.handler, peer=self.peer, service=self.kind,
        )  # fmt: skip
        self._reset(ErrorCode.HANDLER_FAILED)
        return None

    def _reset(self, code: ErrorCode | None) -> None:
        """Abort the connection: the client sees a reset, not an end of file.

        :param code: the error the reset stands for, counted; ``None``: counted already.
        """
        if code is not None and not self._ending:
            self.metrics.errors[code] += 1
        self._ending = True
        self._no_timeout()
        if self._lost:
            return
        transport: Any = self.transport  # a TCP or UNIX transport: it can abort
        transport.abortConnection()


class HalfCloseServerFactory(StreamServerFactory):
    """Build :class:`HalfCloseServerProtocol` instances sharing one configuration and counters.

    :param handler: see :mod:`sockproto.handlers`.
    :param max_request: the largest request accepted, in bytes.
    :param request_timeout: seconds a client has, from connecting, to send its whole
        request; ``None`` for no limit.
    :param max_connections: connections served at once; a new connection over it is
        reset at once.  ``None``: no limit.
    :param handler_timeout: seconds an asynchronous handler has to answer (reset after
        that); ``None``: no limit.
    :param clock: the reactor used for timeouts (the global reactor by default).
    :param log_connections: log each connection's opening and closing (``debug``
        events, rate-limited); ``None``: if the factory is ``noisy``.  See
        :attr:`~sockproto.serving.stream.StreamServerFactory.log_connections`.

    :ivar connections: the protocols whose connection is open.
    :ivar metrics: the service's :class:`~sockproto.serving.metrics.ServiceMetrics`.
    """

    protocol = HalfCloseServerProtocol
    kind = "halfclose"

    def __init__(
        self,
        handler: Handler,
        *,
        max_request: int = DEFAULT_MAX_REQUEST,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        max_connections: int | None = None,
        handler_timeout: float | None = None,
        clock: IReactorTime | None = None,
        log_connections: bool | None = None,
    ) -> None:
        if max_request < 0:
            raise ValueError(f"max_request must be >= 0, not {max_request}")
        for name, value in (("request_timeout", request_timeout), ("handler_timeout", handler_timeout)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None, not {value}")
        super().__init__(max_connections=max_connections, clock=clock, log_connections=log_connections)
        self.handler = handler
        self.max_request = max_request
        self.request_timeout = request_timeout
        self.handler_timeout = handler_timeout

    def build(self, addr: IAddress | None) -> HalfCloseServerProtocol:
        """Return the protocol serving one admitted connection."""
        return HalfCloseServerProtocol(
            self.handler,
            max_request=self.max_request,
            request_timeout=self.request_timeout,
            handler_timeout=self.handler_timeout,
            clock=self._clock_given,
            metrics=self.metrics,
            limiter=self.limiter,
        )

    def refusal(self, addr: IAddress | None) -> Protocol:
        """Return the protocol that resets one refused connection."""
        return _Refusal()


class _Refusal(Protocol):
    """Reset a refused connection at once: a half-close client takes a reset as a failure."""

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.abortConnection()

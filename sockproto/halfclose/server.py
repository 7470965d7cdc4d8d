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

Only transports that deliver the peer's half-close can serve this protocol:
``tcp:``, ``tcp6:``, ``unix:`` (and ``systemd:`` sockets of those kinds).  Twisted's
TLS layer has no half-close (twisted#5341).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IDelayedCall, IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from ..answering import call_handler
from ..handlers import Handler
from ..request import Request, normalize_peer

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
class HalfCloseServerProtocol(TimeoutMixin, Protocol):
    """Read one request to end of file, answer it with ``handler``, close.

    :param handler: called with a :class:`~sockproto.request.Request` (``id``,
        ``kind`` and ``header`` empty) once the client has half-closed.
    :param max_request: the connection is reset as soon as the request passes this
        many bytes.
    :param request_timeout: seconds from connecting until the client's half-close;
        the connection is reset if the request is not complete by then.  ``None``
        disables the limit.
    :param clock: the reactor used for the timeout (the global reactor by default).

    :ivar peer: the client's address, set when the connection is made.
    """

    _log = Logger()

    def __init__(
        self,
        handler: Handler,
        *,
        max_request: int = DEFAULT_MAX_REQUEST,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        clock: IReactorTime | None = None,
    ) -> None:
        self.handler = handler
        self.max_request = max_request
        self.request_timeout = request_timeout
        self.clock = clock
        self.peer: IAddress | None = None
        self._connections: set[HalfCloseServerProtocol] | None = None  # the factory's, if any
        self._chunks: list[bytes] | None = []  # None once the request is complete or refused
        self._received = 0
        self._pending: Deferred[bytes] | None = None  # the handler's answer, if asynchronous
        self._ending = False  # the connection is being closed or reset by us
        self._lost = False

    # -- IProtocol --------------------------------------------------------------------

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.peer = normalize_peer(self.transport.getPeer())
        if self._connections is not None:
            self._connections.add(self)
        if self.request_timeout is not None:
            self.setTimeout(self.request_timeout)  # type: ignore[no-untyped-call]

    def dataReceived(self, data: bytes) -> None:
        chunks = self._chunks
        if chunks is None:
            return
        self._received += len(data)
        if self._received > self.max_request:
            self._chunks = None
            self._log.warn(
                "request from {peer} passed the {limit}-byte limit: connection reset",
                peer=self.peer,
                limit=self.max_request,
            )
            self._reset()
            return
        chunks.append(data)

    def connectionLost(self, reason: Failure = _LOST) -> None:
        self._lost = self._ending = True
        self._chunks = None
        if self.timeOut is not None:
            self.setTimeout(None)  # type: ignore[no-untyped-call]
        if self._connections is not None:
            self._connections.discard(self)
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()

    # -- IHalfCloseableProtocol -------------------------------------------------------

    def readConnectionLost(self) -> None:
        """The client half-closed: the request is complete; answer it, then close.

        Twisted stops reading but keeps the connection open: from here on every path
        ends it (answer and FIN, or reset), or the socket would leak.
        """
        self.setTimeout(None)  # type: ignore[no-untyped-call]
        chunks, self._chunks = self._chunks, None
        if chunks is None or self._ending:  # refused already: the reset is under way
            self._reset()
            return
        request = Request.bare(b"".join(chunks), self.peer)
        try:
            result: Any = self.handler(request)
            # bytes is the common case; anything else (a Deferred, a coroutine, a
            # bytearray) goes through call_handler, which checks it and makes it an answer
            answer = result if type(result) is bytes else call_handler(lambda _: result, request)
        except Exception:
            self._failed(Failure())
            return
        if isinstance(answer, bytes):
            self._answer(answer)
            return
        self._pending = answer
        answer.addCallbacks(self._answered, self._failed)

    def writeConnectionLost(self) -> None:
        """Not used: the server never half-closes its own side."""

    # -- TimeoutMixin -----------------------------------------------------------------

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        """Schedule the request timeout on :attr:`clock` (the global reactor by default)."""
        clock = self.clock
        if clock is None:
            from twisted.internet import reactor

            clock = self.clock = cast(IReactorTime, reactor)
        return clock.callLater(period, func)

    def timeoutConnection(self) -> None:
        """The whole request has not arrived in time: reset the connection."""
        self._chunks = None
        self._log.info(
            "no complete request from {peer} within {timeout:g} s: connection reset",
            peer=self.peer,
            timeout=self.request_timeout,
        )
        self._reset()

    # -- internals --------------------------------------------------------------------

    def _answered(self, answer: bytes) -> None:
        self._pending = None
        if not self._lost:
            self._answer(answer)

    def _answer(self, answer: bytes) -> None:
        """Write the answer, then close cleanly (FIN once it is flushed)."""
        assert self.transport is not None
        self._ending = True
        self.transport.write(answer)
        self.transport.loseConnection()

    def _failed(self, failure: Failure) -> None:
        """The handler failed: log the traceback and reset (never an empty answer)."""
        self._pending = None
        if self._lost and failure.check(CancelledError):
            return None  # cancelled by connectionLost: nobody to tell
        self._log.failure(
            "handler {handler!r} failed for {peer}: connection reset",
            failure=failure,
            handler=self.handler,
            peer=self.peer,
        )
        self._reset()
        return None

    def _reset(self) -> None:
        """Abort the connection: the client sees a reset, not an end of file."""
        self._ending = True
        self.setTimeout(None)  # type: ignore[no-untyped-call]
        if self._lost:
            return
        transport: Any = self.transport  # a TCP or UNIX transport: it can abort
        transport.abortConnection()


class HalfCloseServerFactory(Factory):
    """Build :class:`HalfCloseServerProtocol` instances sharing one configuration.

    :param handler: see :mod:`sockproto.handlers`.
    :param max_request: the largest request accepted, in bytes.
    :param request_timeout: seconds a client has, from connecting, to send its whole
        request; ``None`` for no limit.
    :param clock: the reactor used for timeouts (the global reactor by default).

    :ivar connections: the protocols whose connection is open, for whoever needs to
        count, drain or close them.
    """

    protocol = HalfCloseServerProtocol

    def __init__(
        self,
        handler: Handler,
        *,
        max_request: int = DEFAULT_MAX_REQUEST,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        clock: IReactorTime | None = None,
    ) -> None:
        if max_request < 0:
            raise ValueError(f"max_request must be >= 0, not {max_request}")
        if request_timeout is not None and not request_timeout > 0:
            raise ValueError(f"request_timeout must be positive or None, not {request_timeout}")
        self.handler = handler
        self.max_request = max_request
        self.request_timeout = request_timeout
        self.clock = clock
        self.connections: set[HalfCloseServerProtocol] = set()

    def buildProtocol(self, addr: IAddress | None) -> HalfCloseServerProtocol:
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = cast(IReactorTime, reactor)
        proto = HalfCloseServerProtocol(
            self.handler,
            max_request=self.max_request,
            request_timeout=self.request_timeout,
            clock=self.clock,
        )
        proto.factory = self
        proto._connections = self.connections
        return proto

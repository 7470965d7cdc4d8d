"""The half-close server: one request per connection, ended by the client's ``shutdown(SHUT_WR)``.

The client sends its whole request and shuts down its write side; the server reads
to end of file (:meth:`~HalfCloseServerProtocol.readConnectionLost`), runs the
handler, writes the answer and closes the connection (FIN).  No framing is needed in
either direction.  The rules are :class:`~sockproto.core.halfclose.HalfCloseRequest`'s
(sans IO); the protocol here is the adapter between it, the transport, the handler's
lifecycle (:class:`~sockproto.serving.answering.Answering`) and the timers.

A request that cannot be answered never looks like an empty answer: the connection
is *reset* (:meth:`~twisted.internet.interfaces.ITCPTransport.abortConnection`) when
the request passes ``max_request`` bytes, when the handler fails or overruns
``handler_timeout``, and when the whole request has not arrived ``request_timeout``
seconds after connecting.  (On a UNIX socket the kernel turns an abort into a reset
only while the client is still sending; after the whole request was read, the client
sees a plain end of file.)

Only transports that deliver the peer's half-close can serve this protocol:
``tcp:``, ``tcp6:``, ``unix:`` (and ``systemd:`` sockets of those kinds).  Twisted's
TLS layer has no half-close (twisted#5341) and a ``ProtocolWrapper`` (HAProxy's)
hides it: on such a transport the protocol refuses the connection at once
(:func:`half_close_refusal`), logged once per service.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableDescriptor,
    IHalfCloseableProtocol,
    IReactorTime,
    ISSLTransport,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger, LogLevel
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.declarations import Implements

from ..core.halfclose import HalfCloseRequest, ResetReason, State
from ..core.spf1 import ErrorCode
from ..handlers import Handler
from ..request import Request
from ..serving.logs import LogLimiter
from ..serving.metrics import ServiceMetrics
from ..serving.proxy import ProxyHeader, ProxySettings
from ..serving.settings import Setting, StreamSettings
from ..serving.stream import StreamServerFactory, StreamServerProtocol
from ..serving.streaming import is_streaming
from .settings import DEFAULT_HANDLER_TIMEOUT, DEFAULT_MAX_REQUEST, DEFAULT_REQUEST_TIMEOUT, HalfCloseSettings

__all__ = [
    "DEFAULT_HANDLER_TIMEOUT",
    "DEFAULT_MAX_REQUEST",
    "DEFAULT_REQUEST_TIMEOUT",
    "HalfCloseServerFactory",
    "HalfCloseServerProtocol",
    "half_close_refusal",
]

_LOST = Failure(ConnectionDone())
_new = object.__new__
_RECEIVING = State.RECEIVING  # enum members as globals: see sockproto.core.halfclose
_ANSWERED = State.ANSWERED
_CODES = {
    ResetReason.TOO_LARGE: ErrorCode.TOO_LARGE,
    ResetReason.REQUEST_TIMEOUT: ErrorCode.TIMEOUT,
    ResetReason.HANDLER_TIMEOUT: ErrorCode.TIMEOUT,
    ResetReason.HANDLER_FAILED: ErrorCode.HANDLER_FAILED,
}  # the resets counted in metrics.errors


def half_close_refusal(transport: object) -> str | None:
    """Why ``transport`` cannot deliver a client's half-close to its protocol, or ``None`` if it can.

    TLS (:class:`~twisted.protocols.tls.TLSMemoryBIOProtocol`) copies the interfaces
    of the TCP transport it wraps, ``IHalfCloseableDescriptor`` included, but provides
    ``ISSLTransport``; a :class:`~twisted.protocols.policies.ProtocolWrapper` (Twisted's
    HAProxy wrapper) copies them too, but is itself no ``IHalfCloseableProtocol``, so
    the client's half-close ends the whole connection.
    """
    cls = type(transport)
    # Whether the transport declares interfaces of its own (directlyProvides), told as
    # zope's directlyProvidedBy tells it.  Not by "__provides__" in transport.__dict__:
    # reading a CPython 3.11 instance's __dict__ turns its attributes into a real dict,
    # and every later read and write of them by Twisted's TCP code gets slower
    # (measured with benchmarks/count_halfclose.py --loopback: ~6,000 instructions a
    # connection).
    provides = getattr(transport, "__provides__", None)
    own = provides is not None and not isinstance(provides, Implements)
    if cls in _HALF_CLOSEABLE and not own:
        return None  # a TCP or UNIX transport, as every connection of a service (measured: 0.3 us)
    if ISSLTransport.providedBy(transport):
        return "Twisted's TLS layer has no half-close (twisted#5341)"
    if isinstance(transport, ProtocolWrapper) and not IHalfCloseableProtocol.providedBy(transport):
        return f"{type(transport).__name__} is a ProtocolWrapper, which ends the connection on the half-close"
    if not IHalfCloseableDescriptor.providedBy(transport):
        return f"{type(transport).__name__} does not deliver the peer's half-close"
    if not own:
        _HALF_CLOSEABLE.add(cls)  # its class alone decides: the next ones skip the checks
    return None


_HALF_CLOSEABLE: set[type] = set()


_SOCKETS: tuple[type[Any], ...] = (tcp.Server,)  # the reactor's own server transports
try:
    from twisted.internet import unix
except ImportError:  # pragma: no cover - a platform without AF_UNIX
    pass
else:
    _SOCKETS += (unix.Server,)


def _answer_and_close(transport: Any, data: bytes) -> None:
    """Write the answer, then close the connection cleanly (a FIN after the answer).

    Twisted's ``write`` only buffers, and ``loseConnection`` waits for the reactor's
    next pass to find the socket writable, send, and only then close.  On the reactor's
    own TCP and UNIX transports, with nothing buffered, no producer and an answer of at
    most ``SEND_LIMIT`` bytes, the answer is sent at once; if the kernel took it whole,
    the connection is closed at once too, as Twisted's ``loseConnection`` does itself
    when nothing is left to write (``transport.connectionLost``: the protocol's
    ``connectionLost`` runs before this returns).  That spares each connection an
    ``epoll_ctl`` pair and a pass of the reactor (measured with
    benchmarks/count_halfclose.py --loopback: ~58,000 instructions a connection, which
    puts the whole server under the bare Twisted echo's).  Anything else goes Twisted's
    usual way.
    """
    try:  # FileDescriptor's buffer state (Twisted >= 24.3 has it all; else the usual way)
        now = (
            type(transport) in _SOCKETS
            and len(data) <= transport.SEND_LIMIT
            and transport.connected
            and not transport.disconnecting
            and not transport._writeDisconnecting
            and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)
            and transport.producer is None
            and not transport.TLS
        )
    except AttributeError:  # pragma: no cover - a Twisted that keeps its buffer otherwise
        now = False
    if now:
        sent = transport.writeSomeData(data)  # the bytes the kernel took, or ConnectionLost
        if type(sent) is int:
            if sent == len(data):
                transport.connectionLost(_LOST)
                return
            data = data[sent:]
    transport.write(data)  # the rest, or all of it: Twisted's next pass sends it (or finds the socket gone)
    transport.loseConnection()


def _abort(transport: Any) -> None:
    """Abort ``transport``; a ``ProtocolWrapper`` has no ``abortConnection``: abort what it wraps."""
    abort = getattr(transport, "abortConnection", None)
    if abort is None:
        inner = getattr(transport, "transport", None)
        abort = getattr(inner, "abortConnection", None) or transport.loseConnection
    abort()


@implementer(IHalfCloseableProtocol)
class HalfCloseServerProtocol(StreamServerProtocol):
    """Read one request to end of file, answer it with ``handler``, close.

    Built by a :class:`HalfCloseServerFactory` (:meth:`from_settings`), or standalone
    with these parameters:

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
    :param metrics: the counters to add to (a new one by default).
    :param limiter: rate-limits this connection's log events (a new one by default).
    :param proxy: the connection starts with a PROXY header (see
        :class:`~sockproto.serving.proxy.ProxyHeaderState`); ``None``: it does not.

    :ivar settings: the service's :class:`~sockproto.halfclose.settings.HalfCloseSettings`.
    :ivar peer: the client's address, set when the connection is made.
    :ivar exchange: the connection's :class:`~sockproto.core.halfclose.HalfCloseRequest`
        (sans IO): its state and its bytes.
    """

    _log = Logger()
    kind = "halfclose"
    settings: HalfCloseSettings
    exchange: HalfCloseRequest
    _pending: Deferred[bytes] | None = None  # the handler's answer, if asynchronous
    _lost = False
    _refused = False  # the transport cannot half-close: aborted in makeConnection
    _uncounted = False  # no request counted yet: a PROXY header awaited, or a LOCAL one received

    def __init__(
        self,
        handler: Handler,
        *,
        max_request: int = DEFAULT_MAX_REQUEST,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        handler_timeout: float | None = DEFAULT_HANDLER_TIMEOUT,
        clock: IReactorTime | None = None,
        metrics: ServiceMetrics | None = None,
        limiter: LogLimiter | None = None,
        proxy: ProxySettings | None = None,
    ) -> None:
        self.settings = HalfCloseSettings(
            **self.own_settings(clock, metrics, limiter),
            handler=handler,
            handler_timeout=handler_timeout,
            max_request=max_request,
            request_timeout=request_timeout,
            proxy=proxy,
        )
        self._init_connection()

    def _init_connection(self) -> None:
        self.exchange = HalfCloseRequest(self.settings.max_request)  # type: ignore[arg-type]  # None: streaming only

    @classmethod
    def from_settings(cls, settings: StreamSettings) -> HalfCloseServerProtocol:
        """One protocol for one connection: :meth:`_init_connection` inlined (a call per connection less)."""
        proto = cls.__new__(cls)
        proto.settings = settings  # type: ignore[assignment]
        proto.exchange = HalfCloseRequest(settings.max_request)  # type: ignore[attr-defined]
        # The flags every request reads, as instance attributes: on Python 3.11 an
        # instance reads its class's default through the generic lookup, ~150
        # instructions, and its own attribute in ~20 (measured with
        # benchmarks/count_halfclose.py: ~850 fewer instructions per connection).
        proto._proxy = None
        proto._uncounted = False
        proto.timeOut = None
        proto._refused = False
        proto._pending = None
        return proto

    # -- the settings, by their usual names -------------------------------------------

    @property
    def max_request(self) -> int | None:
        """The largest request accepted, in bytes (``None``: no limit, streaming handlers only)."""
        return self.settings.max_request

    @property
    def request_timeout(self) -> float | None:
        """Seconds from connecting until the client's half-close."""
        return self.settings.request_timeout

    @property
    def clock(self) -> IReactorTime | None:
        """The clock of the timeouts (``None``: the global reactor)."""
        return self.settings.clock

    # -- IProtocol --------------------------------------------------------------------

    def makeConnection(self, transport: ITransport) -> None:
        """Connect, unless ``transport`` cannot deliver a half-close: then abort at once."""
        why = half_close_refusal(transport)
        if why is None:  # Protocol.makeConnection, inlined
            self.connected = 1
            self.transport = transport
            self.connectionMade()
            return
        self.transport = transport
        self._refused = self._lost = True  # never tracked: connectionLost has nothing to do
        self.exchange.reset(ResetReason.SHUTDOWN)
        factory = self.settings.factory
        warned: Any = factory if factory is not None else self
        if not getattr(warned, "_warned_no_half_close", False):
            warned._warned_no_half_close = True
            self._log.error(
                "{service} service cannot run on {transport}: {why}; every connection is aborted. "
                "Listen on tcp:, tcp6: or unix: (behind a TLS-terminating proxy for encryption).",
                service=self.kind, transport=type(transport).__name__, why=why,
            )  # fmt: skip
        self.settings.metrics.connections_refused += 1
        _abort(transport)

    def connectionMade(self) -> None:
        settings = self.settings
        tracker = settings.tracker
        if tracker is None or self.peer is None or settings.log_connections:
            self._track_open()
        else:  # _track_open(), inlined for a quiet factory's connection (see readConnectionLost)
            opened = tracker.open
            opened.add(self)
            metrics = tracker.metrics
            metrics.connections_total += 1
            metrics.connections_open = len(opened)
        if settings.proxy is not None:  # the request, and its timeout, begin after the header
            self._uncounted = True
            self._proxy_begin(settings.proxy)
            return
        settings.metrics.requests += 1  # one request per connection, whatever becomes of it
        timeout = settings.request_timeout
        if timeout is not None:
            sweep = settings.sweep
            if sweep is not None and timeout > sweep.interval:  # _time_out_in(timeout), inlined
                self._sweeping = True
                sweep.waiting[self] = sweep.queue.seconds() + timeout
                if not sweep.running:
                    sweep.start()
            else:
                self._time_out_in(timeout)

    def _proxy_done(self, header: ProxyHeader, proxy: IAddress | None) -> None:
        """The PROXY header is parsed: the request (unless LOCAL) and its timeout begin."""
        super()._proxy_done(header, proxy)
        settings = self.settings
        if header.command != "LOCAL":  # a LOCAL one is counted if it sends a request (_count)
            self._count()
        if settings.request_timeout is not None:
            self._time_out_in(settings.request_timeout)

    def _count(self) -> None:
        """Count this connection's request (on a PROXY listener: not for the header alone)."""
        self._uncounted = False
        self.settings.metrics.requests += 1

    def dataReceived(self, data: bytes) -> None:
        if self._proxy is not None:  # the PROXY_HEADER state: no byte reaches the request before it ends
            rest = self._proxy_data(data)
            if not rest:
                return
            data = rest
        self.settings.metrics.bytes_in += len(data)
        if not self.exchange.receive_data(data):
            self._note(
                "request_too_large", LogLevel.warn,
                "request from {peer} passed the {limit}-byte limit: connection reset", limit=self.max_request,
            )  # fmt: skip
            self._reset()

    def connectionLost(self, reason: Failure = _LOST) -> None:
        if self._refused:
            return
        exchange = self.exchange
        settings = self.settings
        if exchange.state is not _ANSWERED and exchange.reset(ResetReason.LOST) and not self._uncounted:
            settings.metrics.abandoned += 1  # the client went away before its answer
        self._lost = True
        tracker = settings.tracker
        if (
            tracker is None
            or self._sweeping
            or self.timeOut is not None
            or reason.type is not ConnectionDone
            or settings.log_connections
        ):
            self._track_close(reason)
        else:  # _track_close(reason), inlined for a quiet factory's clean close (see readConnectionLost)
            opened = tracker.open
            opened.discard(self)
            tracker.metrics.connections_open = len(opened)
            if not opened and tracker.waiters:
                tracker.all_closed()
        pending = self._pending
        if pending is not None:
            self._pending = None
            pending.cancel()

    # -- IHalfCloseableProtocol -------------------------------------------------------

    def readConnectionLost(self) -> None:
        """The client half-closed: the request is complete; answer it, then close.

        Twisted stops reading but keeps the connection open: from here on every path
        ends it (answer and FIN, or reset), or the socket would leak.  Inside a PROXY
        header, the connection is reset.
        """
        if self._uncounted:
            if self._proxy is not None:
                self._proxy_eof()
                return
            self._count()  # after a LOCAL header: a request all the same
        settings = self.settings
        if self._sweeping:  # _no_timeout(), inlined: the sweep had not set the timer yet
            self._sweeping = False
            sweep: Any = settings.sweep
            waiting = sweep.waiting
            if waiting.pop(self, None) is not None and not waiting:
                sweep.stop_if_idle()
        if self.timeOut is not None:
            self.setTimeout(None)  # type: ignore[no-untyped-call]
        state = self.exchange
        if state.state is not _RECEIVING:  # refused already: the reset is under way
            self._abort()
            return
        payload = state.eof_received()
        # Request(None, None, payload, (), None, self.peer) without the call to __init__,
        # as the frame decoder builds them (Request.decoder_skips_init).  With the other calls
        # inlined on this path (tracker, sweep): ~2,600 instructions a connection less,
        # measured with benchmarks/count_halfclose.py.
        request = _new(Request)
        request.kind = request.id = request.spec = None
        request.payload = payload
        request.header = ()
        request.peer = self.peer
        try:
            result: Any = settings.handler(request)
            if type(result) is not bytes:  # a Deferred, a coroutine, a bytearray...
                result = settings.answering.start(result, settings.pending, self._answered)
        except Exception:
            self._failed(Failure())
            return
        if type(result) is bytes:  # _answer(result), inlined: the path of every request
            data = state.answer(result)
            metrics = settings.metrics
            metrics.answers += 1
            metrics.bytes_out += len(data)
            _answer_and_close(self.transport, data)
        elif not state.finished:  # COMPLETE: not fired already (_answered did its work then)
            state.answering()
            self._pending = result

    def writeConnectionLost(self) -> None:
        """Not used: the server never half-closes its own side."""

    # -- timeouts and shutdown --------------------------------------------------------

    def timeoutConnection(self) -> None:
        """The whole request (or PROXY header) has not arrived in time: reset the connection."""
        proxy = self.settings.proxy
        if self._proxy is not None and proxy is not None:
            self._proxy_timed_out(proxy.timeout)
            return
        if self.exchange.reset(ResetReason.REQUEST_TIMEOUT):
            self._note(
                "request_timeout", LogLevel.info,
                "no complete request from {peer} within {timeout:g} s: connection reset",
                timeout=self.request_timeout,
            )  # fmt: skip
            self._reset()

    def drain(self) -> None:
        """Shut down gracefully: a connection that has sent nothing is reset.

        It reads on for :data:`~sockproto.serving.stream.FIRST_READ_GRACE` first (its
        request may be in the socket's buffer already, not read yet).  One whose
        request is arriving, or whose handler runs, goes on as usual (its answer, then
        FIN) within the drain's deadline and the request timeout.  One still inside its
        PROXY header is reset at once.
        """
        if self._proxy is not None:
            self._proxy_drop(None, "")
            return
        if self.exchange.idle and self._drain_after_grace():
            return
        if self.exchange.idle and self.exchange.reset(ResetReason.SHUTDOWN):
            if not self._uncounted:  # a LOCAL health check is no request abandoned
                self.settings.metrics.abandoned += 1
            self._reset()

    # -- internals --------------------------------------------------------------------

    def _answered(self, result: bytes | Failure) -> None:
        """The asynchronous handler fired (``Answering.start`` took it out of the pending work)."""
        self._pending = None
        if isinstance(result, Failure):
            self._failed(result)
        elif not self.exchange.finished:  # ANSWERING, or COMPLETE if it fired at once
            self._answer(result)

    def _answer(self, answer: bytes) -> None:
        """Write the answer, then close cleanly (FIN once it is flushed)."""
        data = self.exchange.answer(answer)
        metrics = self.settings.metrics
        metrics.answers += 1
        metrics.bytes_out += len(data)
        _answer_and_close(self.transport, data)

    def _failed(self, failure: Failure) -> None:
        """The handler failed or overran: log it and reset (never an empty answer)."""
        if self._lost and failure.check(CancelledError):
            return  # cancelled by connectionLost: nobody to tell
        if self.exchange.finished:
            return
        code, _ = self.settings.answering.failed(failure, self.peer, ": connection reset")
        reason = ResetReason.HANDLER_TIMEOUT if code is ErrorCode.TIMEOUT else ResetReason.HANDLER_FAILED
        self.exchange.reset(reason)
        self._reset()

    def _reset(self) -> None:
        """Abort the connection for the request's reset reason: the client sees a reset, not an EOF."""
        code = _CODES.get(self.exchange.reason)  # type: ignore[arg-type]
        if code is not None:
            if self._uncounted:  # after a LOCAL header: a request that failed
                self._count()
            self.settings.metrics.errors[code] += 1
        self._abort()

    def _abort(self) -> None:
        self._no_timeout()
        if not self._lost:
            self.transport.abortConnection()  # type: ignore[union-attr]  # TCP or UNIX: it can


class HalfCloseServerFactory(StreamServerFactory):
    """Build :class:`HalfCloseServerProtocol` instances sharing one configuration and counters.

    :param handler: see :mod:`sockproto.handlers`.
    :param max_request: the largest request accepted, in bytes; ``None`` (no limit) only
        for a streaming handler.
    :param request_timeout: seconds a client has, from connecting, to send its whole
        request; ``None`` for no limit.
    :param max_connections: connections served at once; a new connection over it is
        reset at once.  ``None``: no limit.
    :param handler_timeout: seconds an asynchronous handler has to answer (reset after
        that): 30 by default, as ``twistd sockproto-halfclose``; ``None``: no limit (a
        handler that never answers then holds its connection forever).
    :param clock: the reactor used for timeouts (the global reactor by default).
    :param log_connections: log each connection's opening and closing (``debug``
        events, rate-limited); ``None``: if the factory is ``noisy``.  See
        :attr:`~sockproto.serving.stream.StreamServerFactory.log_connections`.
    :param proxy: every connection must start with a PROXY header (v1 or v2) from a
        peer of ``proxy.networks``; ``None`` (the default): none is expected.  For some
        listeners only, listen there through a :class:`~sockproto.serving.proxy.ProxyEndpoint`.

    :ivar settings: the :class:`~sockproto.halfclose.settings.HalfCloseSettings` its
        protocols share; each setting is also an attribute of the factory.
    :ivar connections: the protocols whose connection is open.
    :ivar metrics: the service's :class:`~sockproto.serving.metrics.ServiceMetrics`.
    """

    protocol = HalfCloseServerProtocol
    kind = "halfclose"
    settings: HalfCloseSettings

    max_request: Setting[int | None] = Setting()
    request_timeout: Setting[float | None] = Setting()
    proxy: Setting[ProxySettings | None] = Setting()

    def __init__(
        self,
        handler: Handler,
        *,
        max_request: int | None = DEFAULT_MAX_REQUEST,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        max_connections: int | None = None,
        handler_timeout: float | None = DEFAULT_HANDLER_TIMEOUT,
        clock: IReactorTime | None = None,
        log_connections: bool | None = None,
        proxy: ProxySettings | None = None,
    ) -> None:
        super().__init__(max_connections=max_connections, clock=clock)
        self.settings = HalfCloseSettings(
            **self.stream_settings(clock, log_connections),
            handler=handler,
            handler_timeout=handler_timeout,
            max_request=max_request,
            request_timeout=request_timeout,
            proxy=proxy,
        )
        if is_streaming(handler):  # the handler takes the body in chunks (sockproto.serving.streaming)
            from .streaming import HalfCloseStreamingProtocol

            self.protocol = HalfCloseStreamingProtocol

    def refusal(self, addr: IAddress | None) -> Protocol:
        """Return the protocol that resets one refused connection."""
        return _Refusal()


class _Refusal(Protocol):
    """Reset a refused connection at once: a half-close client takes a reset as a failure."""

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.abortConnection()

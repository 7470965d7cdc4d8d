"""What the stream servers (frame, half-close) share: tracking, limits, logs, shutdown.

:class:`StreamServerFactory` admits a connection only while the service is under
``max_connections`` and not stopping; otherwise it builds the service's *refusal*
protocol (frame: ERROR 5 then close; half-close: a reset), counted in
``connections_refused``.  :class:`StreamServerProtocol` reports its connection to the
factory's :class:`~sockproto.serving.connections.ConnectionTracker` and logs it (rate-limited,
and only if the factory wants it: :attr:`~StreamServerFactory.log_connections`).

Its timeouts are :class:`~twisted.protocols.policies.TimeoutMixin`'s, on the protocol
itself (Twisted's ``TimeoutFactory`` wrapper would drop half-close), served by the
factory's :class:`~sockproto.serving.timers.TimerQueue`: one reactor call for all the
connections of a service rather than one per connection.  A fixed deadline (the
half-close request timeout) goes through the factory's
:class:`~sockproto.serving.timers.TimeoutSweep`, which sets it only on the connections still
waiting a second later: a short connection costs no timer at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar, Final, TypeVar, cast

from twisted.internet.address import IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, LogLevel
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from ..handlers import Handler
from ..request import normalize_peer
from .connections import ConnectionTracker
from .logs import LogLimiter
from .metrics import ServiceMetrics
from .proxy import ProxyHeader, ProxyHeaderState
from .settings import Setting, StreamSettings
from .timers import TimeoutSweep, TimerQueue
from .tls import tls_refusal

__all__ = ["FIRST_READ_GRACE", "StreamServerFactory", "StreamServerProtocol"]

_LOST = Failure(ConnectionDone())

FIRST_READ_GRACE: Final = 0.05
"""Seconds a drain gives a connection from which nothing was read yet, before it counts
as idle.  Accepted just before the drain, its first request may already be in the
socket's buffer, sent but not read by the reactor yet (a rolling restart's race)."""

P = TypeVar("P", bound="StreamServerProtocol")


class StreamServerProtocol(TimeoutMixin, Protocol, ProxyHeaderState):
    """Base of the stream server protocols: connection tracking, logs, timeouts, abort,
    and the PROXY_HEADER state a connection on a ``proxy:`` listener starts in
    (:class:`~sockproto.serving.proxy.ProxyHeaderState`).

    Everything a connection shares with the others of its service is in
    :attr:`settings`, one frozen object held by reference; the instance holds only the
    connection's own state.

    :ivar settings: the service's :class:`~sockproto.serving.settings.StreamSettings`
        (a service's subclass of it).
    :ivar peer: the client's address: the one Twisted gave the factory's
        ``buildProtocol``, or else the transport's ``getPeer()`` once connected.
    """

    _log: ClassVar[Logger]
    kind: ClassVar[str] = "stream"
    settings: StreamSettings
    peer: IAddress | None = None
    _sweeping = False  # the sweep holds a deadline for this connection (_time_out_in)
    _read_grace_over = False  # a drain waited FIRST_READ_GRACE for a first read (_drain_after_grace)

    @classmethod
    def from_settings(cls: type[P], settings: StreamSettings) -> P:
        """One protocol serving a connection with ``settings`` (a factory's, or its own)."""
        proto = cls.__new__(cls)
        proto.settings = settings
        proto._init_connection()
        return proto

    def _init_connection(self) -> None:
        """Set the state of one connection; subclasses with state of their own override it."""

    @classmethod
    def own_settings(
        cls, clock: IReactorTime | None, metrics: ServiceMetrics | None, limiter: LogLimiter | None
    ) -> dict[str, Any]:
        """What a protocol built without a factory shares with nobody, as settings keywords:
        its own counters and log limiter (unless given), its clock and its logger."""
        return {
            "metrics": metrics if metrics is not None else ServiceMetrics(cls.kind),
            "limiter": limiter if limiter is not None else LogLimiter(clock),
            "clock": clock,
            "log": cls._log,
        }

    # -- the settings, by their usual names -------------------------------------------

    @property
    def factory(self) -> Any:
        """The factory that built this protocol (``None`` without one)."""
        return self.settings.factory

    @property
    def metrics(self) -> ServiceMetrics:
        """The service's counters."""
        return self.settings.metrics

    @property
    def limiter(self) -> LogLimiter:
        """The service's log rate limiter."""
        return self.settings.limiter

    @property
    def handler(self) -> Handler:
        """The service's handler."""
        return self.settings.handler

    @property
    def handler_timeout(self) -> float | None:
        """Seconds an asynchronous handler has to answer."""
        return self.settings.handler_timeout

    @property
    def log_connections(self) -> bool:
        """Whether the connection's opening and closing are logged (``debug`` events)."""
        return self.settings.log_connections

    # -- to call from connectionMade and connectionLost -------------------------------

    def _track_open(self) -> None:
        """The connection is made: note the peer, count and log it."""
        if self.peer is None:
            assert self.transport is not None
            self.peer = normalize_peer(self.transport.getPeer())
        settings = self.settings
        tracker = settings.tracker
        if tracker is not None:
            tracker.opened(self)
        if settings.log_connections and getattr(settings, "proxy", None) is None:  # else at the header
            self._log_open()

    def _log_open(self, **fields: Any) -> None:
        """Log the connection's opening (rate-limited), with its peer."""
        limiter = self.settings.limiter
        if limiter.admit("connection_open"):
            limiter.log(
                self._log, "connection_open", LogLevel.debug, "connection from {peer}",
                peer=self.peer, service=self.kind, **fields,
            )  # fmt: skip

    def _proxy_done(self, header: ProxyHeader, proxy: IAddress | None) -> None:
        """The PROXY header is parsed: log the opening now, with the client it names."""
        if self.settings.log_connections:
            self._log_open(proxy=proxy)

    def _track_close(self, reason: Failure) -> None:
        """The connection is lost: stop the timer, forget it, log it."""
        if self._sweeping or self.timeOut is not None:
            self._no_timeout()
        settings = self.settings
        tracker = settings.tracker
        if tracker is not None:
            tracker.closed(self)
        if reason.type is not ConnectionDone:  # a failed TLS handshake (mtls:) says why
            refused = tls_refusal(self.transport, reason)
            if refused is not None:
                self._note("tls_refused", LogLevel.warn, "TLS with {peer} failed: {why}", why=refused)
        if settings.log_connections and settings.limiter.admit("connection_close"):
            settings.limiter.log(
                self._log, "connection_close", LogLevel.debug, "connection from {peer} closed: {reason}",
                peer=self.peer, service=self.kind, reason=reason.getErrorMessage(),
            )  # fmt: skip

    def _time_out_in(self, period: float) -> None:
        """Time the connection out (``timeoutConnection``) ``period`` seconds from now.

        The deadline is fixed: unlike ``setTimeout``, activity does not push it back.
        The :class:`~twisted.protocols.policies.TimeoutMixin` timer is set by the
        factory's :class:`~sockproto.serving.timers.TimeoutSweep`, with the time left, only if
        the connection still waits at its next sweep: a short connection costs no timer.
        """
        sweep = self.settings.sweep
        if sweep is None:
            self.setTimeout(period)  # type: ignore[no-untyped-call]
        else:
            self._sweeping = True
            sweep.add(self, period)

    def _no_timeout(self) -> None:
        """Cancel the timeout, whether set or waiting for the sweep to be set."""
        if self._sweeping:
            self._sweeping = False
            self.settings.sweep.discard(self)  # type: ignore[union-attr]
        if self.timeOut is not None:
            self.setTimeout(None)  # type: ignore[no-untyped-call]

    def _note(self, category: str, level: LogLevel, fmt: str, **fields: Any) -> None:
        """Log an event about this connection, within the service's log rate."""
        limiter = self.settings.limiter
        if limiter.admit(category):
            limiter.log(self._log, category, level, fmt, peer=self.peer, service=self.kind, **fields)

    # -- shutdown ---------------------------------------------------------------------

    def drain(self) -> None:
        """Shut down gracefully: each service's protocol says how."""
        raise NotImplementedError

    def _drain_after_grace(self) -> bool:
        """For a drain finding nothing read from the connection yet: drain again in
        :data:`FIRST_READ_GRACE` seconds (reading on until then), unless that wait is over.

        :return: whether the drain is to wait (``False``: the grace is over, drain now).
        """
        if self._read_grace_over:
            return False
        self._read_grace_over = True
        self._clock().callLater(FIRST_READ_GRACE, self._drain_late)
        return True

    def _drain_late(self) -> None:
        tracker = self.settings.tracker
        if tracker is None or self in tracker.open:  # still open: drain it now
            self.drain()

    def fail_health_checks(self) -> None:
        """The service is about to stop: fail health checks (nothing to do for a service without them)."""

    def abort(self) -> None:
        """Reset the connection now (the drain's deadline passed)."""
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    # -- TimeoutMixin -----------------------------------------------------------------

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        """Schedule the timeout: on the factory's :class:`~sockproto.serving.timers.TimerQueue`.

        :class:`~twisted.protocols.policies.TimeoutMixin` calls this; the timer it
        returns is an :class:`~twisted.internet.interfaces.IDelayedCall`, exact to the
        clock's time like a ``DelayedCall``.  A protocol built without a factory uses
        the settings' clock directly.
        """
        timers = self.settings.timers
        if timers is not None:
            return timers.call_later(period, func)
        return self._clock().callLater(period, func)

    def _clock(self) -> IReactorTime:
        clock = self.settings.clock
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        return clock


class StreamServerFactory(Factory):
    """Base of the stream server factories: admission, counters, graceful stop.

    Subclasses set :attr:`settings` (their service's frozen settings, made with
    :meth:`stream_settings`) and :attr:`protocol`, and implement :meth:`refusal`.

    :param max_connections: connections served at once; ``None`` for no limit.
    :param clock: schedules timeouts (the global reactor by default).
    :param log_connections: log each connection's opening and closing; ``None``: if
        the factory is :attr:`~twisted.internet.protocol.Factory.noisy`.  See
        :attr:`log_connections`.

    :ivar settings: what every protocol built from now on shares (one frozen object).
    :ivar metrics: the service's :class:`~sockproto.serving.metrics.ServiceMetrics`.
    :ivar limiter: the service's :class:`~sockproto.serving.logs.LogLimiter`.
    :ivar tracker: the service's :class:`~sockproto.serving.connections.ConnectionTracker`.
    :ivar timers: the service's :class:`~sockproto.serving.timers.TimerQueue`: every
        connection's timeout, on one reactor call.
    :ivar sweep: the service's :class:`~sockproto.serving.timers.TimeoutSweep`: sets a fixed
        deadline (the half-close request timeout) only on the connections still
        waiting a second later.
    :ivar log_connections: whether the protocols built from now on log their
        connection's opening and closing (the ``debug`` events ``connection_open`` and
        ``connection_close``, rate-limited like every event a peer causes).  ``None``,
        the default, follows Twisted's :attr:`~twisted.internet.protocol.Factory.noisy`:
        a factory made quiet (``factory.noisy = False``, as one does to silence its
        start and stop messages) logs nothing per connection either, and spends nothing
        on it, not even a rate-limit check.  ``True`` or ``False`` decides regardless.
    """

    kind: ClassVar[str] = "stream"
    replies_through_port: ClassVar[bool] = False
    protocol: type[StreamServerProtocol]  # type: ignore[assignment]
    settings: StreamSettings
    _log = Logger()

    handler: Setting[Handler] = Setting()
    handler_timeout: Setting[float | None] = Setting()
    _noisy = True
    _log_connections: bool | None = None

    def __init__(self, *, max_connections: int | None = None, clock: IReactorTime | None = None) -> None:
        self.metrics = ServiceMetrics(self.kind)
        self.limiter = LogLimiter(clock)
        self.timers = TimerQueue(clock)
        self.sweep = TimeoutSweep(self.timers)
        self.tracker: ConnectionTracker[Any] = ConnectionTracker(self.metrics, max_connections)

    def stream_settings(self, clock: IReactorTime | None, log_connections: bool | None) -> dict[str, Any]:
        """The settings every stream service's protocols share, as keyword arguments."""
        self._log_connections = log_connections
        return {
            "metrics": self.metrics,
            "limiter": self.limiter,
            "clock": clock,
            "log": self.protocol._log,
            "factory": self,
            "tracker": self.tracker,
            "timers": self.timers,
            "sweep": self.sweep,
            "log_connections": self._logs_connections(),
        }

    @property
    def log_connections(self) -> bool | None:
        """Whether protocols log their connection's opening and closing; ``None``: if :attr:`noisy`."""
        return self._log_connections

    @log_connections.setter
    def log_connections(self, wanted: bool | None) -> None:
        self._log_connections = wanted
        self.settings = replace(self.settings, log_connections=self._logs_connections())

    @property
    def noisy(self) -> bool:
        """Twisted's ``noisy``: also whether connections are logged, unless :attr:`log_connections` says."""
        return self._noisy

    @noisy.setter
    def noisy(self, value: bool) -> None:
        self._noisy = value
        if hasattr(self, "settings"):
            self.settings = replace(self.settings, log_connections=self._logs_connections())

    def _logs_connections(self) -> bool:
        """What the protocols check: decided here, so that a connection checks a plain flag."""
        wanted = self._log_connections
        return bool(self._noisy) if wanted is None else wanted

    @property
    def clock(self) -> IReactorTime | None:
        """The clock of the service's timeouts and log windows (``None``: the global reactor).

        Set it before the first connection: the :attr:`timers` and the :attr:`limiter`
        follow it.
        """
        return self.settings.clock

    @clock.setter
    def clock(self, clock: IReactorTime | None) -> None:
        self.settings = replace(self.settings, clock=clock)
        self.timers.clock = clock
        self.limiter.clock = clock

    @property
    def max_connections(self) -> int | None:
        """Connections served at once, or ``None``."""
        return self.tracker.max_connections

    @property
    def connections(self) -> set[Any]:
        """The protocols whose connection is open."""
        return self.tracker.open

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        """Build the serving protocol, or the refusal one when over the limit or stopping."""
        tracker = self.tracker
        # admits() is called only when a limit or a drain may refuse (a call less per connection)
        if not (tracker.accepting and tracker.max_connections is None) and not tracker.admits():
            self.limiter.emit(
                self._log,
                "connection_refused",
                LogLevel.warn,
                "refused a connection from {peer}: {why}",
                peer=addr,
                service=self.kind,
                why=(
                    f"{self.tracker.max_connections} connections already open"
                    if self.tracker.accepting
                    else "the service is shutting down"
                ),
            )
            refused = self.refusal(addr)
            refused.factory = self
            return refused
        proto = self.protocol.from_settings(self.settings)
        if addr is not None:  # what the transport's getPeer() would build again
            proto.peer = normalize_peer(addr) if isinstance(addr, IPv6Address) else addr
        return proto

    def startFactory(self) -> None:
        """The first port listens: keep the timers' reactor call between connections."""
        self.timers.hold()

    def stopFactory(self) -> None:
        """The last port stopped: the timers' reactor call goes with the last timer."""
        self.sweep.release()
        self.timers.release()

    def refusal(self, addr: IAddress | None) -> Protocol:
        """Return the protocol that refuses one connection."""
        raise NotImplementedError

    def _clock(self) -> IReactorTime:
        clock = self.settings.clock
        if clock is None:
            from twisted.internet import reactor

            clock = self.clock = cast(IReactorTime, reactor)
        return clock

    # -- graceful stop (sockproto.serving.service.DrainableFactory) -----------------------------

    def fail_health_checks(self) -> None:
        """Before stopping: fail the balancer's health checks while still serving (``--drain-grace``)."""
        self.tracker.fail_health_checks()

    def stop_accepting(self) -> None:
        """Refuse every new connection from now on."""
        self.tracker.accepting = False

    def drain(self) -> Deferred[None]:
        """Drain every open connection; fire once they are all closed."""
        return self.tracker.drain()

    def abort(self) -> int:
        """Reset every open connection; return how many."""
        return self.tracker.abort()

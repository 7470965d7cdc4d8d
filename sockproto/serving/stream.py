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
from typing import Any, ClassVar, cast

from twisted.internet.address import IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, LogLevel
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from ..request import normalize_peer
from .connections import ConnectionTracker
from .logs import LogLimiter
from .metrics import ServiceMetrics
from .timers import TimeoutSweep, TimerQueue

__all__ = ["StreamServerFactory", "StreamServerProtocol"]

_LOST = Failure(ConnectionDone())


class StreamServerProtocol(TimeoutMixin, Protocol):
    """Base of the stream server protocols: connection tracking, logs, timeouts, abort.

    :ivar peer: the client's address: the one Twisted gave the factory's
        ``buildProtocol``, or else the transport's ``getPeer()`` once connected.
    :ivar metrics: the service's :class:`~sockproto.serving.metrics.ServiceMetrics` (the
        protocol's own when it was built without a factory).
    :ivar clock: schedules the timeouts of a protocol built without a factory (the
        global reactor by default); a factory's protocols use its
        :attr:`~StreamServerFactory.timers`.
    :ivar log_connections: whether the connection's opening and closing are logged
        (debug events ``connection_open`` and ``connection_close``); the factory's
        :attr:`~StreamServerFactory.log_connections`.
    """

    _log: ClassVar[Logger]
    kind: ClassVar[str] = "stream"
    log_connections: bool = True
    peer: IAddress | None = None
    _tracker: ConnectionTracker[Any] | None = None
    _timers: TimerQueue | None = None
    _sweep: TimeoutSweep | None = None
    _sweeping = False  # the sweep holds a deadline for this connection (_time_out_in)

    def __init__(
        self,
        *,
        clock: IReactorTime | None = None,
        metrics: ServiceMetrics | None = None,
        limiter: LogLimiter | None = None,
    ) -> None:
        self.clock = clock
        self.metrics = metrics if metrics is not None else ServiceMetrics(self.kind)
        self.limiter = limiter if limiter is not None else LogLimiter(clock)

    @classmethod
    def configured(cls, settings: dict[str, Any]) -> type[StreamServerProtocol]:
        """Return a subclass holding ``settings`` as class attributes.

        A factory's connections share their settings (handler, limits, metrics, the
        factory itself): held once by the class rather than by every instance, they
        cost an idle connection nothing (with 10,000 idle frame connections, about 190
        bytes a connection less).  Its instances are made by :meth:`for_connection`.
        """
        # staticmethod: read from an instance, each value comes back as it is (a handler
        # function must not become a bound method)
        shared = {name: staticmethod(value) for name, value in settings.items()}
        namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, **shared}
        return type(cls.__name__, (cls,), namespace)

    @classmethod
    def for_connection(cls) -> StreamServerProtocol:
        """One protocol of a :meth:`configured` class: its state, no settings of its own."""
        proto = cls.__new__(cls)
        proto._init_connection()
        return proto

    def _init_connection(self) -> None:
        """Set the state of one connection; subclasses with state of their own override it."""

    # -- to call from connectionMade and connectionLost -------------------------------

    def _track_open(self) -> None:
        """The connection is made: note the peer, count and log it."""
        if self.peer is None:
            assert self.transport is not None
            self.peer = normalize_peer(self.transport.getPeer())
        tracker = self._tracker
        if tracker is not None:
            tracker.opened(self)
        if self.log_connections and self.limiter.admit("connection_open"):
            self.limiter.log(
                self._log, "connection_open", LogLevel.debug, "connection from {peer}",
                peer=self.peer, service=self.kind,
            )  # fmt: skip

    def _track_close(self, reason: Failure) -> None:
        """The connection is lost: stop the timer, forget it, log it."""
        if self._sweeping or self.timeOut is not None:
            self._no_timeout()
        tracker = self._tracker
        if tracker is not None:
            tracker.closed(self)
        if self.log_connections and self.limiter.admit("connection_close"):
            self.limiter.log(
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
        sweep = self._sweep
        if sweep is None:
            self.setTimeout(period)  # type: ignore[no-untyped-call]
        else:
            self._sweeping = True
            sweep.add(self, period)

    def _no_timeout(self) -> None:
        """Cancel the timeout, whether set or waiting for the sweep to be set."""
        if self._sweeping:
            self._sweeping = False
            self._sweep.discard(self)  # type: ignore[union-attr]
        if self.timeOut is not None:
            self.setTimeout(None)  # type: ignore[no-untyped-call]

    def _note(self, category: str, level: LogLevel, fmt: str, **fields: Any) -> None:
        """Log an event about this connection, within the service's log rate."""
        if self.limiter.admit(category):
            self.limiter.log(self._log, category, level, fmt, peer=self.peer, service=self.kind, **fields)

    # -- shutdown ---------------------------------------------------------------------

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
        :attr:`clock` directly.
        """
        timers = self._timers
        if timers is not None:
            return timers.call_later(period, func)
        return self._clock().callLater(period, func)

    def _clock(self) -> IReactorTime:
        clock = self.clock
        if clock is None:
            from twisted.internet import reactor

            clock = self.clock = cast(IReactorTime, reactor)
        return clock


class StreamServerFactory(Factory):
    """Base of the stream server factories: admission, counters, graceful stop.

    Subclasses implement :meth:`build` (the serving protocol) and :meth:`refusal`.

    :param max_connections: connections served at once; ``None`` for no limit.
    :param clock: schedules timeouts (the global reactor by default).
    :param log_connections: log each connection's opening and closing; ``None``: if
        the factory is :attr:`~twisted.internet.protocol.Factory.noisy`.  See
        :attr:`log_connections`.

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
    _log = Logger()

    def __init__(
        self,
        *,
        max_connections: int | None = None,
        clock: IReactorTime | None = None,
        log_connections: bool | None = None,
    ) -> None:
        self.metrics = ServiceMetrics(self.kind)
        self.limiter = LogLimiter(clock)
        self.timers = TimerQueue(clock)
        self.sweep = TimeoutSweep(self.timers)
        self.tracker: ConnectionTracker[Any] = ConnectionTracker(self.metrics, max_connections)
        self.clock = clock
        self.log_connections = log_connections

    @property
    def clock(self) -> IReactorTime | None:
        """The clock of the service's timeouts and log windows (``None``: the global reactor).

        Set it before the first connection: the :attr:`timers` and the :attr:`limiter`
        follow it.
        """
        return self._clock_given

    @clock.setter
    def clock(self, clock: IReactorTime | None) -> None:
        self._clock_given = clock
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
        if not self.tracker.admits():
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
        proto = self.build(addr)
        if proto.factory is not self:  # else set once, by the class (shared_settings)
            for name, value in self._given_to_protocols().items():
                setattr(proto, name, value)
        if addr is not None:  # what the transport's getPeer() would build again
            proto.peer = normalize_peer(addr) if isinstance(addr, IPv6Address) else addr
        return proto

    def build(self, addr: IAddress | None) -> StreamServerProtocol:
        """Return the protocol serving one admitted connection."""
        raise NotImplementedError

    def _given_to_protocols(self) -> dict[str, Any]:
        """What the factory gives each protocol it builds, by attribute name."""
        wanted = self.log_connections  # decided once: the protocol checks a plain attribute
        return {
            "factory": self,
            "_tracker": self.tracker,
            "_timers": self.timers,
            "_sweep": self.sweep,
            "log_connections": bool(self.noisy) if wanted is None else wanted,
        }

    def shared_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        """``settings``, the protocols' constructor arguments the factory passes, and
        what it gives each protocol: the class attributes of a configured class."""
        return {
            **settings,
            "clock": self._clock_given,
            "metrics": self.metrics,
            "limiter": self.limiter,
            **self._given_to_protocols(),
        }

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
        clock = self._clock_given
        if clock is None:
            from twisted.internet import reactor

            clock = self.clock = cast(IReactorTime, reactor)
        return clock

    # -- graceful stop (sockproto.serving.service.DrainableFactory) -----------------------------

    def stop_accepting(self) -> None:
        """Refuse every new connection from now on."""
        self.tracker.accepting = False

    def drain(self) -> Deferred[None]:
        """Drain every open connection; fire once they are all closed."""
        return self.tracker.drain()

    def abort(self) -> int:
        """Reset every open connection; return how many."""
        return self.tracker.abort()

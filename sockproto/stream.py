"""What the stream servers (frame, half-close) share: tracking, limits, logs, shutdown.

:class:`StreamServerFactory` admits a connection only while the service is under
``max_connections`` and not stopping; otherwise it builds the service's *refusal*
protocol (frame: ERROR 5 then close; half-close: a reset), counted in
``connections_refused``.  :class:`StreamServerProtocol` reports its connection to the
factory's :class:`~sockproto.connections.ConnectionTracker`, logs it (rate-limited), and
schedules its timeouts (:class:`~twisted.protocols.policies.TimeoutMixin`, on the
protocol itself: Twisted's ``TimeoutFactory`` wrapper would drop half-close) on the
factory's clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, LogLevel
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from .connections import ConnectionTracker
from .logs import LogLimiter
from .metrics import ServiceMetrics
from .request import normalize_peer

__all__ = ["StreamServerFactory", "StreamServerProtocol"]

_LOST = Failure(ConnectionDone())


class StreamServerProtocol(TimeoutMixin, Protocol):
    """Base of the stream server protocols: connection tracking, logs, timeouts, abort.

    :ivar peer: the client's address, once connected.
    :ivar metrics: the service's :class:`~sockproto.metrics.ServiceMetrics` (the
        protocol's own when it was built without a factory).
    :ivar clock: schedules the timeouts (the global reactor by default).
    """

    _log: ClassVar[Logger]
    kind: ClassVar[str] = "stream"

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
        self.peer: IAddress | None = None
        self._tracker: ConnectionTracker[Any] | None = None

    # -- to call from connectionMade and connectionLost -------------------------------

    def _track_open(self) -> None:
        """The connection is made: note the peer, count and log it."""
        assert self.transport is not None
        self.peer = normalize_peer(self.transport.getPeer())
        if self._tracker is not None:
            self._tracker.opened(self)
        if self.limiter.admit("connection_open"):
            self.limiter.log(
                self._log, "connection_open", LogLevel.debug, "connection from {peer}",
                peer=self.peer, service=self.kind,
            )  # fmt: skip

    def _track_close(self, reason: Failure) -> None:
        """The connection is lost: stop the timer, forget it, log it."""
        if self.timeOut is not None:
            self.setTimeout(None)  # type: ignore[no-untyped-call]
        if self._tracker is not None:
            self._tracker.closed(self)
        if self.limiter.admit("connection_close"):
            self.limiter.log(
                self._log, "connection_close", LogLevel.debug, "connection from {peer} closed: {reason}",
                peer=self.peer, service=self.kind, reason=reason.getErrorMessage(),
            )  # fmt: skip

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
        """Schedule a timeout on :attr:`clock` (the global reactor by default)."""
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

    :ivar metrics: the service's :class:`~sockproto.metrics.ServiceMetrics`.
    :ivar limiter: the service's :class:`~sockproto.logs.LogLimiter`.
    :ivar tracker: the service's :class:`~sockproto.connections.ConnectionTracker`.
    """

    kind: ClassVar[str] = "stream"
    replies_through_port: ClassVar[bool] = False
    _log = Logger()

    def __init__(self, *, max_connections: int | None = None, clock: IReactorTime | None = None) -> None:
        self.clock = clock
        self.metrics = ServiceMetrics(self.kind)
        self.limiter = LogLimiter(clock)
        self.tracker: ConnectionTracker[Any] = ConnectionTracker(self.metrics, max_connections)

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
        proto.factory = self
        proto._tracker = self.tracker
        return proto

    def build(self, addr: IAddress | None) -> StreamServerProtocol:
        """Return the protocol serving one admitted connection."""
        raise NotImplementedError

    def refusal(self, addr: IAddress | None) -> Protocol:
        """Return the protocol that refuses one connection."""
        raise NotImplementedError

    def _clock(self) -> IReactorTime:
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = cast(IReactorTime, reactor)
        return self.clock

    # -- graceful stop (sockproto.service.DrainableFactory) -----------------------------

    def stop_accepting(self) -> None:
        """Refuse every new connection from now on."""
        self.tracker.accepting = False

    def drain(self) -> Deferred[None]:
        """Drain every open connection; fire once they are all closed."""
        return self.tracker.drain()

    def abort(self) -> int:
        """Reset every open connection; return how many."""
        return self.tracker.abort()

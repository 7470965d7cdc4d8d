"""The open connections of a stream service: counted, limited, drained at shutdown.

Twisted's :class:`~twisted.protocols.policies.WrappingFactory` could count connections,
but it wraps every protocol in a ``ProtocolWrapper``, which does not pass the peer's
half-close through (so a half-close server would never see its requests end).  The
stream factories of sockproto track their own protocols instead: the factory asks
:meth:`ConnectionTracker.admits` before building a protocol, the protocol reports
:meth:`~ConnectionTracker.opened` and :meth:`~ConnectionTracker.closed`, and the
service drains them all through :meth:`~ConnectionTracker.drain` when it stops.

A protocol may do what :meth:`~ConnectionTracker.opened` and
:meth:`~ConnectionTracker.closed` do itself, on its hot path, without the calls (as
:class:`~sockproto.serving.stream.StreamServerProtocol` does): add itself to
:attr:`~ConnectionTracker.open` (or discard itself), set the service's
``connections_open`` to its size (and count ``connections_total`` on opening), and
once it is left empty call :meth:`~ConnectionTracker.all_closed` if
:attr:`~ConnectionTracker.waiters` is not.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from twisted.internet.defer import Deferred, succeed

from .metrics import ServiceMetrics

__all__ = ["ConnectionTracker", "DrainableConnection"]


class DrainableConnection(Protocol):
    """What a tracked protocol provides for a shutdown."""

    def drain(self) -> None:
        """Take no new request; close once the requests already received are answered."""

    def abort(self) -> None:
        """Close at once (a reset): the drain's deadline passed."""

    def fail_health_checks(self) -> None:
        """Fail health checks from now on, serving requests as usual (a shutdown's grace)."""


C = TypeVar("C", bound=DrainableConnection)


class ConnectionTracker(Generic[C]):
    """Count and limit a service's connections; close them all at shutdown.

    :param metrics: the service's counters (``connections_*``).
    :param max_connections: connections served at once; ``None`` for no limit.

    :ivar open: the protocols whose connection is open.
    :ivar accepting: ``False`` once :meth:`drain` started: every new connection is refused.
    :ivar failing_checks: the service is about to stop: health checks are failed
        (see :meth:`fail_health_checks`).
    :ivar waiters: the Deferreds of :meth:`closed_all` waiting for the last connection.
    """

    def __init__(self, metrics: ServiceMetrics, max_connections: int | None = None) -> None:
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be at least 1 or None, not {max_connections}")
        self.metrics = metrics
        self.max_connections = max_connections
        self.open: set[C] = set()
        self.accepting = True
        self.failing_checks = False
        self.waiters: list[Deferred[None]] = []

    def admits(self) -> bool:
        """Whether one more connection may be served now; a refusal is counted."""
        if self.accepting and (self.max_connections is None or len(self.open) < self.max_connections):
            return True
        self.metrics.connections_refused += 1
        return False

    def opened(self, connection: C) -> None:
        """``connection`` is made: count it."""
        self.open.add(connection)
        self.metrics.connections_total += 1
        self.metrics.connections_open = len(self.open)

    def closed(self, connection: C) -> None:
        """``connection`` is lost: forget it; the last one ends a drain."""
        self.open.discard(connection)
        self.metrics.connections_open = len(self.open)
        if not self.open and self.waiters:
            self.all_closed()

    def all_closed(self) -> None:
        """The last connection closed: fire the Deferreds of :meth:`closed_all`."""
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            d.callback(None)

    def fail_health_checks(self) -> None:
        """Make every connection, open now or later, fail health checks (still serving requests)."""
        self.failing_checks = True
        for connection in list(self.open):
            connection.fail_health_checks()

    def drain(self) -> Deferred[None]:
        """Refuse new connections and drain the open ones; fire once they are all closed.

        Each connection closes by itself once it owes nothing (see its ``drain``).
        Cancelling the Deferred (the drain's deadline) leaves them open: call
        :meth:`abort` for that.
        """
        self.accepting = False
        for connection in list(self.open):
            connection.drain()
        return self.closed_all()

    def closed_all(self) -> Deferred[None]:
        """A Deferred that fires once no connection is open (at once if none is)."""
        if not self.open:
            return succeed(None)
        d: Deferred[None] = Deferred(self._forget)
        self.waiters.append(d)
        return d

    def abort(self) -> int:
        """Abort every open connection; return how many there were."""
        connections = list(self.open)
        for connection in connections:
            connection.abort()
        return len(connections)

    def _forget(self, d: Deferred[None]) -> None:
        if d in self.waiters:
            self.waiters.remove(d)

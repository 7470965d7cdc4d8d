"""Services: listen on endpoints while running, and stop gracefully (drain) on shutdown.

:class:`ServerService` is what the twistd plugins run: one factory listening on every
endpoint given, an optional thread pool for blocking handlers, and a graceful stop.
Twisted has no drain helper, so the stop is spelled out here (twistd waits on the
Deferred that :meth:`ServerService.stopService` returns, on SIGTERM or SIGINT):

1. stop accepting: stream listeners close (a connection that still arrives is
   refused), UDP sockets stop being read;
2. drain: every request already received is served and answered; a connection
   that owes nothing is closed at once, the others as soon as they owe nothing;
3. after ``drain_timeout`` seconds, whatever remains is aborted (connections reset,
   handlers cancelled);
4. UDP sockets close, the thread pool stops (waiting for running handlers), and the
   other children (the metrics endpoint) stop last.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any, ClassVar, Final, Protocol, cast

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, TimeoutError, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from .logs import LogLimiter
from .metrics import ServiceMetrics
from .threads import ThreadedHandler

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT",
    "DrainableFactory",
    "Listenable",
    "ListeningService",
    "ServerService",
    "listening_services",
]

DEFAULT_DRAIN_TIMEOUT: Final = 10.0
"""Seconds a stopping service waits for the requests already received to be answered."""

_ABORT_GRACE: Final = 2.0  # seconds for aborted connections to report connectionLost


class Listenable(Protocol):
    """Anything with an endpoint's ``listen(factory)``: stream endpoints, sockproto's UDP ones."""

    def listen(self, factory: Any, /) -> Deferred[Any]: ...


class DrainableFactory(Protocol):
    """What :class:`ServerService` needs of a factory to stop it gracefully."""

    replies_through_port: ClassVar[bool]
    """Whether answers go out through the listening socket (UDP): then it closes last."""

    @property
    def metrics(self) -> ServiceMetrics:
        """The service's counters."""

    @property
    def limiter(self) -> LogLimiter:
        """The service's log rate limiter (flushed at the end of the stop)."""

    def stop_accepting(self) -> None:
        """Take no new connection or datagram from now on."""

    def drain(self) -> Deferred[None]:
        """Finish what was received; fire once nothing more is owed."""

    def abort(self) -> int:
        """Give up on what is still running (resets, cancellations); return how many."""


class ListeningService(Service):
    """Listen on ``endpoint`` with ``factory`` from start to stop.

    A port that cannot be bound fails the start at once (twistd then exits with the
    error) instead of leaving a service that serves nothing.

    :param kind: which sockproto service this is, for logs (``frame``, ``datagram``...).
    :param description: the endpoint string; also the service's name.
    """

    _log = Logger()

    def __init__(self, kind: str, description: str, endpoint: Listenable, factory: Any) -> None:
        self.kind = kind
        self.name = description
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        failures: list[Any] = []
        self.endpoint.listen(self.factory).addCallbacks(self._listening, failures.append)
        if failures:
            failures[0].raiseException()

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()  # type: ignore[no-untyped-call]

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        self._log.info(
            "sockproto-{service} listening on {endpoint} ({address})",
            service=self.kind,
            endpoint=self.description,
            address=port.getHost(),
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        self._log.info(
            "sockproto-{service} stops listening on {endpoint}", service=self.kind, endpoint=self.description
        )
        stopped = port.stopListening()
        return stopped if isinstance(stopped, Deferred) else succeed(None)


def listening_services(name: str, endpoints: list[tuple[str, Listenable]], factory: Any) -> MultiService:
    """Return one service listening with ``factory`` on every ``(description, endpoint)``."""
    parent = MultiService()
    parent.setName(name)
    for description, endpoint in endpoints:
        ListeningService(name, description, endpoint, factory).setServiceParent(parent)  # type: ignore[no-untyped-call]
    return parent


class ServerService(MultiService):
    """One sockproto service: ``factory`` listening on every endpoint, stopped gracefully.

    :param kind: ``frame``, ``datagram`` or ``halfclose``: the service's name, for logs.
    :param factory: a sockproto server factory (see :class:`DrainableFactory`).
    :param endpoints: ``(description, endpoint)`` pairs to listen on.
    :param drain_timeout: seconds the stop waits for requests already received; the
        rest is aborted after that.  ``0`` aborts at once.
    :param drain_grace: seconds, before anything else, during which the service keeps
        listening and serving but fails health checks (a frame service answers PINGs with
        ERROR 5): a load balancer checking with a PING marks it down and stops sending
        before its listener closes, so no connection dies in the accept queue.  ``0``
        (the default): no grace.  Give it more than the balancer's time to mark a
        server down (HAProxy: ``fall`` x ``inter``).
    :param threads: the :class:`~sockproto.serving.threads.ThreadedHandler` whose pool this
        service starts and stops, if the handler runs in threads.
    :param clock: the reactor timing the drain (the global reactor by default).

    Other services added as children (the metrics endpoint) start after the listeners
    and stop after the drain.
    """

    _log = Logger()

    def __init__(
        self,
        kind: str,
        factory: DrainableFactory,
        endpoints: list[tuple[str, Listenable]],
        *,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        drain_grace: float = 0.0,
        threads: ThreadedHandler | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if drain_timeout < 0 or drain_grace < 0:
            raise ValueError(
                f"drain_timeout and drain_grace must not be negative, not {drain_timeout}, {drain_grace}"
            )
        self.setName(kind)  # type: ignore[no-untyped-call]
        self.kind = kind
        self.factory = factory
        self.drain_timeout = drain_timeout
        self.drain_grace = drain_grace
        self.threads = threads
        self.clock = clock
        self.listeners: list[ListeningService] = []
        for description, endpoint in endpoints:
            listener = ListeningService(kind, description, endpoint, factory)
            listener.setServiceParent(self)  # type: ignore[no-untyped-call]
            self.listeners.append(listener)

    def startService(self) -> None:
        if self.threads is not None:
            self.threads.start()
        super().startService()  # type: ignore[no-untyped-call]

    def stopService(self) -> Deferred[None]:
        """Stop accepting, drain, abort what is left after the deadline, then stop the rest."""
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        factory = self.factory
        fail_checks = getattr(factory, "fail_health_checks", None)
        if self.drain_grace and fail_checks is not None:
            fail_checks()
            self._log.info(
                "sockproto-{service} stopping: failing health checks for {grace:g} s, still serving",
                service=self.kind, grace=self.drain_grace, sockproto_event="drain_grace",
            )  # fmt: skip
            await deferLater(self._clock(), self.drain_grace, lambda: None)
        factory.stop_accepting()
        if not factory.replies_through_port:
            await _stop_all(self.listeners)
        metrics = factory.metrics
        self._log.info(
            "sockproto-{service} draining: {connections} connection(s) open, {in_flight} request(s) "
            "in flight (up to {timeout:g} s)",
            service=self.kind,
            connections=metrics.connections_open,
            in_flight=metrics.in_flight,
            timeout=self.drain_timeout,
            sockproto_event="drain_start",
        )
        aborted = await self._drain()
        if factory.replies_through_port:
            await _stop_all(self.listeners)
        if self.threads is not None:
            self.threads.stop()
        await _stop_all([child for child in self if child not in self.listeners])
        factory.limiter.flush(self._log)
        self._log.info(
            "sockproto-{service} stopped: {requests} request(s), {answers} answer(s), "
            "{aborted} aborted at the drain deadline",
            service=self.kind,
            requests=metrics.requests,
            answers=metrics.answers,
            aborted=aborted,
            sockproto_event="stopped",
        )

    async def _drain(self) -> int:
        """Wait for the factory to drain, up to the deadline; return how many were aborted."""
        clock = self._clock()
        try:
            await self.factory.drain().addTimeout(self.drain_timeout, clock)
        except TimeoutError:
            pass
        else:
            return 0
        aborted = self.factory.abort()
        self._log.warn(
            "sockproto-{service}: the {timeout:g} s drain deadline passed: {aborted} aborted",
            service=self.kind,
            timeout=self.drain_timeout,
            aborted=aborted,
            sockproto_event="drain_aborted",
        )
        with suppress(TimeoutError):  # let the aborted connections report their loss
            await self.factory.drain().addTimeout(_ABORT_GRACE, clock)
        return aborted

    def _clock(self) -> IReactorTime:
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = cast(IReactorTime, reactor)
        return self.clock


async def _stop_all(services: list[Any]) -> None:
    """Stop ``services`` at once and wait for all of them."""
    stopping = [maybeDeferred(IService(service).stopService) for service in services if service.running]
    if stopping:
        await DeferredList(stopping, consumeErrors=True)

"""The parts of :class:`~sockproto.frame.pool.FramePool`: its errors, one pooled connection
with its heartbeat, and what the pool knows of each endpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..core.header import HeaderSpec
from .client import FrameClientProtocol, RequestTimeout

if TYPE_CHECKING:
    from twisted.application.internet import ClientService

__all__ = [
    "EndpointStatus",
    "NoEndpointAvailable",
    "PoolClosed",
    "PoolError",
    "RequestLost",
]


class PoolError(Exception):
    """A request the pool could not carry (the base of the pool's own errors)."""


class NoEndpointAvailable(PoolError):
    """Every endpoint is down (its latest connection attempt failed), or none came up in time.

    :ivar failures: each endpoint's name and the last failure seen on it (``None``: none yet).
    """

    def __init__(self, failures: dict[str, str | None], why: str = "every endpoint is down") -> None:
        self.failures = dict(failures)
        each = "; ".join(f"{name}: {failure or 'not connected yet'}" for name, failure in failures.items())
        super().__init__(f"no endpoint available, {why} ({each})")


class RequestLost(PoolError):
    """The connection carrying the request died before its answer came.

    The request was not resent (unless the caller said ``retry=True``): the server may
    or may not have served it.

    :ivar endpoint: the endpoint's name.
    :ivar reason: why the connection ended.
    """

    def __init__(self, endpoint: str, reason: str) -> None:
        self.endpoint = endpoint
        self.reason = reason
        super().__init__(f"the connection to {endpoint} was lost with the request in flight: {reason}")


class PoolClosed(PoolError):
    """The pool is closing or closed: it takes no new request."""


def describe_failure(failure: Failure | BaseException) -> str:
    """A one-line ``Type: message`` for an endpoint's last failure."""
    error = failure.value if isinstance(failure, Failure) else failure
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@dataclass(frozen=True)
class EndpointStatus:
    """What the pool knows of one endpoint now (see :meth:`FramePool.status`).

    :ivar connected: connections up.
    :ivar pending: requests (and PINGs) waiting for their answer on them.
    :ivar down: no connection up and the latest attempt failed: requests skip it.
    """

    name: str
    connected: int
    pending: int
    connections_made: int
    connections_lost: int
    last_failure: str | None
    down: bool


@dataclass(eq=False)
class EndpointState:
    """One endpoint of the pool and its connection slots."""

    name: str
    endpoint: IStreamClientEndpoint
    slots: list[Slot] = field(default_factory=list)
    last_failure: str | None = None
    failed: bool = False  # the latest connection attempt failed
    connections_made: int = 0
    connections_lost: int = 0

    @property
    def connected(self) -> list[PooledProtocol]:
        """The connections up."""
        return [s.proto for s in self.slots if s.proto is not None]

    @property
    def down(self) -> bool:
        """Whether requests skip it: nothing up and the latest attempt failed."""
        return self.failed and not any(s.proto is not None for s in self.slots)

    def status(self) -> EndpointStatus:
        up = self.connected
        return EndpointStatus(
            self.name,
            len(up),
            sum(p.pending for p in up),
            self.connections_made,
            self.connections_lost,
            self.last_failure,
            self.down,
        )


class PoolHooks:
    """What a slot tells its pool (implemented by :class:`~sockproto.frame.pool.FramePool`)."""

    def connection_made(self, proto: PooledProtocol) -> None:
        """``proto`` is up and may carry requests."""

    def connection_lost(self, proto: PooledProtocol, reason: str) -> None:
        """``proto`` is gone; its :class:`~twisted.application.internet.ClientService` reconnects."""

    def connect_failed(self, state: EndpointState, failure: Failure) -> None:
        """A connection attempt to ``state`` failed."""


@dataclass(eq=False)
class Slot:
    """One connection of an endpoint, kept up by its own ClientService."""

    state: EndpointState
    hooks: PoolHooks
    proto: PooledProtocol | None = None
    service: ClientService | None = None


class PooledProtocol(FrameClientProtocol):
    """A frame client that PINGs after ``keepalive`` idle seconds and dies without its PONG.

    Idle means nothing sent: the server's ``--idle-timeout`` counts from the last frame
    it received, so a keepalive shorter than it keeps the connection.
    """

    _log = Logger()

    def __init__(
        self,
        slot: Slot,
        header: HeaderSpec,
        *,
        max_payload: int,
        clock: Any,
        keepalive: float | None,
        ping_timeout: float,
    ) -> None:
        super().__init__(header, max_payload=max_payload, clock=clock)
        self.slot = slot
        self.clock = clock
        self.keepalive = keepalive if header.has_kind else None  # no kind field: no PING
        self.ping_timeout = ping_timeout
        self.last_sent = 0.0
        self.lost_reason: str | None = None  # set once the connection is gone
        self._why_closed: str | None = None  # set when we close it ourselves
        self._heartbeat: IDelayedCall | None = None

    @property
    def is_lost(self) -> bool:
        """Whether the connection is gone."""
        return self.lost_reason is not None

    def connectionMade(self) -> None:
        parent: Any = super()  # Protocol's is untyped; the client's may not be
        parent.connectionMade()
        self.last_sent = self.clock.seconds()
        self._arm()
        self.slot.proto = self
        self.slot.hooks.connection_made(self)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.lost_reason = self._why_closed or describe_failure(reason)
        if self._heartbeat is not None and self._heartbeat.active():
            self._heartbeat.cancel()
        self._heartbeat = None
        if self.slot.proto is self:
            self.slot.proto = None
        self.slot.hooks.connection_lost(self, self.lost_reason)  # first: a retry must not pick us
        super().connectionLost(reason)  # fails what is in flight (the pool sees is_lost)

    def request(self, payload: bytes, *, timeout: float | None = None) -> Deferred[bytes]:
        self.last_sent = self.clock.seconds()
        return super().request(payload, timeout=timeout)

    def ping(self, payload: bytes = b"", *, timeout: float | None = None) -> Deferred[bytes]:
        self.last_sent = self.clock.seconds()
        return super().ping(payload, timeout=timeout)

    def _arm(self) -> None:
        """Schedule the next heartbeat check ``keepalive`` seconds after the last frame sent."""
        if self.keepalive is None or self.is_lost:
            return
        delay = max(0.0, self.last_sent + self.keepalive - self.clock.seconds())
        self._heartbeat = self.clock.callLater(delay, self._beat)

    def _beat(self) -> None:
        self._heartbeat = None
        assert self.keepalive is not None
        if self.clock.seconds() < self.last_sent + self.keepalive:  # something went out since
            self._arm()
            return
        self.ping(timeout=self.ping_timeout).addCallbacks(self._ponged, self._no_pong)

    def _ponged(self, _: bytes) -> None:
        self._arm()

    def _no_pong(self, failure: Failure) -> None:
        if self.is_lost:
            return  # the connection went first; connectionLost said why
        if failure.check(RequestTimeout):
            self._why_closed = f"no PONG within {self.ping_timeout:g} s (heartbeat)"
            self._log.warn(
                "closing the connection to {endpoint}: {why}",
                endpoint=self.slot.state.name,
                why=self._why_closed,
            )
            transport: Any = self.transport  # an ITCPTransport: it can abort
            transport.abortConnection()
        else:  # the server answered the PING with an ERROR: it is alive
            self._arm()


class SlotFactory(Factory):
    """Build the :class:`PooledProtocol` of one slot."""

    def __init__(self, slot: Slot, build: Callable[[Slot], PooledProtocol]) -> None:
        self.slot = slot
        self.build = build

    def buildProtocol(self, addr: IAddress | None) -> PooledProtocol:
        proto = self.build(self.slot)
        proto.factory = self
        return proto


@implementer(IStreamClientEndpoint)
class WatchedEndpoint:
    """An endpoint that tells the pool of each failed connection attempt (ClientService does not)."""

    def __init__(self, state: EndpointState, hooks: PoolHooks) -> None:
        self.state = state
        self.hooks = hooks

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting: Deferred[IProtocol] = self.state.endpoint.connect(protocolFactory)

        def failed(failure: Failure) -> Failure:
            self.hooks.connect_failed(self.state, failure)
            return failure

        return connecting.addErrback(failed)

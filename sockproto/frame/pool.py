"""A pool of frame connections over one or more endpoints, that survives real networks.

Each connection is kept up by its own :class:`~twisted.application.internet.ClientService`
(reconnecting with exponential backoff and jitter); a request goes on the connection
with the fewest unanswered requests, whichever its endpoint.  An idle connection sends
a PING after ``keepalive`` seconds (so the server's ``--idle-timeout`` and stateful
firewalls keep it) and is closed and replaced if its PONG does not come in time.

.. code-block:: python

   pool = FramePool(["10.0.0.1:8750", "10.0.0.2:8750"], connections=2, keepalive=30)
   pool.startService()  # or let the first request start it; or add it to an application
   answer = await pool.request(b"hello", timeout=5)
   await pool.close()
"""

from __future__ import annotations

import contextlib
import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.python.failure import Failure

from ..core.decoder import DEFAULT_MAX_PAYLOAD
from ..core.header import SPF1, HeaderSpec
from .client import AnswerTooLarge, FrameProtocolError, RemoteError, RequestTimeout
from .pool_conn import (
    EndpointState,
    EndpointStatus,
    NoEndpointAvailable,
    PoolClosed,
    PooledProtocol,
    PoolError,
    PoolHooks,
    RequestLost,
    Slot,
    SlotFactory,
    WatchedEndpoint,
    describe_failure,
)

__all__ = [
    "EndpointStatus",
    "FramePool",
    "NoEndpointAvailable",
    "PoolClosed",
    "PoolError",
    "RequestLost",
    "default_retry_policy",
]

_NOT_LOST = (RemoteError, RequestTimeout, AnswerTooLarge, FrameProtocolError, CancelledError)


def default_retry_policy() -> Callable[[int], float]:
    """Seconds before reconnection attempt ``n``: 0.1 s doubling to 10 s, plus up to 0.25 s jitter."""
    return backoffPolicy(initialDelay=0.1, maxDelay=10.0, factor=2.0, jitter=lambda: random.uniform(0, 0.25))  # noqa: S311


class _Waiting:
    """A request (or :meth:`FramePool.wait_ready`) waiting for a connection."""

    __slots__ = ("d", "fail_fast", "timer")

    def __init__(self, d: Deferred[PooledProtocol | None], fail_fast: bool) -> None:
        self.d = d
        self.fail_fast = fail_fast  # fails at once when every endpoint is down
        self.timer: IDelayedCall | None = None


class FramePool(MultiService, PoolHooks):
    """Frame connections to several endpoints; ``await pool.request(payload)``.

    :param endpoints: Twisted client endpoint strings, ``HOST:PORT`` / ``[IPv6]:PORT``
        shorthands, or endpoints (named by their ``repr`` in errors).
    :param connections: connections kept up to each endpoint.
    :param header: the wire header; it must match the servers'.
    :param keepalive: seconds without sending before a connection PINGs (``None``: never).
        Keep it below the servers' ``--idle-timeout``.  Headers without a kind field
        cannot PING: no heartbeat then.
    :param ping_timeout: seconds a PONG may take before the connection is closed and
        replaced (default: ``keepalive``, at most 10).
    :param connect_timeout: seconds a connection attempt to a ``HOST:PORT`` may take.
    :param retry_policy: seconds to wait before reconnection attempt ``n`` (as
        :class:`~twisted.application.internet.ClientService` takes it); default
        :func:`default_retry_policy`.
    :param max_retries: how many times a ``retry=True`` request lost with its connection
        is resent.
    :param reactor: connects and keeps time (a :class:`~twisted.internet.task.Clock` in
        tests when every endpoint is an object); the global reactor by default.
    """

    def __init__(
        self,
        endpoints: Sequence[str | IStreamClientEndpoint],
        *,
        connections: int = 1,
        header: HeaderSpec = SPF1,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        keepalive: float | None = 30.0,
        ping_timeout: float | None = None,
        connect_timeout: float = 10.0,
        retry_policy: Callable[[int], float] | None = None,
        max_retries: int = 2,
        reactor: Any = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if not endpoints:
            raise ValueError("a pool needs at least one endpoint")
        if connections < 1:
            raise ValueError(f"connections must be at least 1, not {connections}")
        if keepalive is not None and keepalive <= 0:
            raise ValueError(f"keepalive must be positive (or None), not {keepalive}")
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.header = header
        self.max_payload = max_payload
        self.keepalive = keepalive
        self.ping_timeout = ping_timeout if ping_timeout is not None else min(keepalive or 10.0, 10.0)
        self.max_retries = max_retries
        self._states: list[EndpointState] = []
        policy = retry_policy or default_retry_policy()
        for given in endpoints:
            name, endpoint = self._parse(given, connect_timeout)
            state = EndpointState(name, endpoint)
            self._states.append(state)
            for _ in range(connections):
                slot = Slot(state, self)
                factory = SlotFactory(slot, self._build)
                slot.service = ClientService(WatchedEndpoint(state, self), factory, policy, clock=reactor)
                slot.service.setServiceParent(self)
                state.slots.append(slot)
        self._ready: list[PooledProtocol] = []
        self._turn = 0
        self._waiting: deque[_Waiting] = deque()  # requests without a connection yet
        self._ready_waiters: list[_Waiting] = []  # wait_ready() callers
        self._in_flight = 0
        self._drained: list[Deferred[None]] = []
        self._closing = False

    # -- the API ----------------------------------------------------------------------

    def request(
        self, payload: bytes, *, timeout: float | None = None, retry: bool = False
    ) -> Deferred[bytes]:
        """Send ``payload`` on the least busy connection; fire with the answer's payload.

        A request waits for a connection (at most ``timeout`` seconds, which also bound
        the answer) unless every endpoint is down: then it fails at once.

        :param retry: the request is idempotent: if its connection dies before the
            answer, resend it (at most ``max_retries`` times, within ``timeout``).
        :raises NoEndpointAvailable: every endpoint is down (their last failures named).
        :raises RequestLost: its connection died first (and ``retry`` was false).
        :raises RequestTimeout: no connection, or no answer, within ``timeout``.
        :raises RemoteError: the server answered ERROR.
        :raises PoolClosed: :meth:`close` was called.
        """
        if self._closing:
            return fail(PoolClosed("the pool is closed"))
        if not self.running:
            self.startService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._request(payload, timeout, retry))

    def wait_ready(self, timeout: float | None = None, *, fail_fast: bool = False) -> Deferred[None]:
        """Fire once a connection is up (at once if one is); fail after ``timeout`` seconds.

        :param fail_fast: fail as soon as every endpoint is down, as a request does
            (else wait for a reconnection, up to ``timeout``).
        :raises NoEndpointAvailable: (in the Deferred) on the timeout, naming each failure.
        """
        if self._closing:
            return fail(PoolClosed("the pool is closed"))
        if not self.running:
            self.startService()  # type: ignore[no-untyped-call]
        if self._ready:
            return succeed(None)
        if fail_fast and self._all_down():
            return fail(self._no_endpoint())
        waiting = self._enqueue(self._ready_waiters, timeout, "none came up", fail_fast)
        return waiting.d.addCallback(lambda _: None)

    def status(self) -> list[EndpointStatus]:
        """Each endpoint's connections, pending requests, counts and last failure."""
        return [state.status() for state in self._states]

    @property
    def in_flight(self) -> int:
        """Requests sent and not answered yet."""
        return self._in_flight

    def close(self, timeout: float | None = None) -> Deferred[None]:
        """Take no more requests, let those in flight finish, then close every connection.

        Requests still waiting for a connection fail with :class:`PoolClosed`.

        :param timeout: seconds to wait for the requests in flight (``None``: their own
            timeouts); those still unanswered then fail with :class:`RequestLost`.
        """
        return Deferred.fromCoroutine(self._close(timeout))

    # -- requests ---------------------------------------------------------------------

    async def _request(self, payload: bytes, timeout: float | None, retry: bool) -> bytes:
        clock = self.reactor
        deadline = None if timeout is None else clock.seconds() + timeout
        attempt = 0
        while True:
            proto = self._choose()
            if proto is None:
                if self._all_down():
                    raise self._no_endpoint()
                remaining = None if deadline is None else max(0.0, deadline - clock.seconds())
                chosen = await self._enqueue(self._waiting, remaining, "none came up", True).d
                assert chosen is not None
                proto = chosen
            remaining = None if deadline is None else deadline - clock.seconds()
            if remaining is not None and remaining <= 0:
                raise RequestTimeout(f"no answer within {timeout:g} s")
            self._in_flight += 1
            try:
                return await proto.request(payload, timeout=remaining)
            except Exception as e:
                if not proto.is_lost or isinstance(e, _NOT_LOST):
                    raise
                lost = RequestLost(proto.slot.state.name, proto.lost_reason or describe_failure(e))
                expired = deadline is not None and clock.seconds() >= deadline
                if not retry or attempt >= self.max_retries or self._closing or expired:
                    raise lost from None
                attempt += 1
            finally:
                self._in_flight -= 1
                if not self._in_flight:
                    self._drained, drained = [], self._drained
                    for d in drained:
                        d.callback(None)

    def _choose(self) -> PooledProtocol | None:
        """The connection up with the fewest unanswered requests (ties taken in turn)."""
        ready = self._ready
        count = len(ready)
        best: PooledProtocol | None = None
        for i in range(count):
            proto = ready[(self._turn + i) % count]
            if best is None or proto.pending < best.pending:
                best = proto
                if not best.pending:
                    break
        self._turn = (self._turn + 1) % (count or 1)
        return best

    def _enqueue(
        self, queue: deque[_Waiting] | list[_Waiting], timeout: float | None, why: str, fail_fast: bool
    ) -> _Waiting:
        def cancel(_: Deferred[PooledProtocol | None]) -> None:
            if waiting in queue:
                queue.remove(waiting)
            if waiting.timer is not None and waiting.timer.active():
                waiting.timer.cancel()

        waiting = _Waiting(Deferred(cancel), fail_fast)
        queue.append(waiting)
        if timeout is not None:

            def expire() -> None:
                waiting.timer = None
                queue.remove(waiting)
                if queue is self._waiting:
                    error: Exception = RequestTimeout(
                        f"no connection within {timeout:g} s: {self._no_endpoint()}"
                    )
                else:
                    error = self._no_endpoint(f"{why} within {timeout:g} s")
                waiting.d.errback(error)

            waiting.timer = self.reactor.callLater(timeout, expire)
        return waiting

    @staticmethod
    def _release(waiting: _Waiting) -> None:
        if waiting.timer is not None and waiting.timer.active():
            waiting.timer.cancel()
        waiting.timer = None

    def _all_down(self) -> bool:
        return all(state.down for state in self._states)

    def _no_endpoint(self, why: str = "every endpoint is down") -> NoEndpointAvailable:
        return NoEndpointAvailable({s.name: s.last_failure for s in self._states}, why)

    # -- PoolHooks: what the connections tell -----------------------------------------

    def _build(self, slot: Slot) -> PooledProtocol:
        return PooledProtocol(
            slot,
            self.header,
            max_payload=self.max_payload,
            clock=self.reactor,
            keepalive=self.keepalive,
            ping_timeout=self.ping_timeout,
        )

    def connection_made(self, proto: PooledProtocol) -> None:
        state = proto.slot.state
        state.failed = False
        state.connections_made += 1
        self._ready.append(proto)
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiting in waiters:
            self._release(waiting)
            waiting.d.callback(None)
        while self._waiting and self._ready:  # each sends at once, so the next sees its load
            waiting = self._waiting.popleft()
            self._release(waiting)
            waiting.d.callback(self._choose())

    def connection_lost(self, proto: PooledProtocol, reason: str) -> None:
        if proto in self._ready:
            self._ready.remove(proto)
            proto.slot.state.connections_lost += 1
            proto.slot.state.last_failure = reason

    def connect_failed(self, state: EndpointState, failure: Failure) -> None:
        if self._closing or failure.check(CancelledError):
            return
        state.failed = True
        state.last_failure = describe_failure(failure)
        if self._all_down():  # nobody is coming: fail what waits, at once
            waiters = [*self._waiting, *(w for w in self._ready_waiters if w.fail_fast)]
            self._waiting.clear()
            self._ready_waiters = [w for w in self._ready_waiters if not w.fail_fast]
            for waiting in waiters:
                self._release(waiting)
                waiting.d.errback(self._no_endpoint())

    # -- stopping ---------------------------------------------------------------------

    async def _close(self, timeout: float | None) -> None:
        if not self._closing:
            self._closing = True
            waiters = [*self._waiting, *self._ready_waiters]
            self._waiting.clear()
            self._ready_waiters.clear()
            for waiting in waiters:
                self._release(waiting)
                waiting.d.errback(PoolClosed("the pool closed before a connection came up"))
        if self._in_flight:
            drained: Deferred[None] = Deferred()
            self._drained.append(drained)
            if timeout is not None:
                drained.addTimeout(timeout, self.reactor)
            with contextlib.suppress(TimeoutError):  # then stopping fails the rest: RequestLost
                await drained
        if self.running:
            await self.stopService()  # type: ignore[no-untyped-call]

    def __repr__(self) -> str:
        names = ", ".join(state.name for state in self._states)
        return f"<FramePool [{names}] up={len(self._ready)} in_flight={self._in_flight}>"

    # -- endpoints --------------------------------------------------------------------

    def _parse(self, given: str | IStreamClientEndpoint, timeout: float) -> tuple[str, IStreamClientEndpoint]:
        if not isinstance(given, str):
            return repr(given), given
        from ..cli.endpoints import client_endpoint  # the CLI's parser: HOST:PORT as it means it

        target = client_endpoint(self.reactor, given, datagram=False, timeout=timeout)
        if not IStreamClientEndpoint.providedBy(target.endpoint):
            raise ValueError(f"{given!r}: a frame pool needs stream endpoints, not udp:")
        endpoint: IStreamClientEndpoint = target.endpoint
        return target.text, endpoint

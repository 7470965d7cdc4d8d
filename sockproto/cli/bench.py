"""``sockproto bench``: a load generator against any sockproto server.

``concurrency`` workers share ``requests`` requests; each worker sends its next request
as soon as its previous one is answered, so ``concurrency`` requests are in flight.
Frame and datagram workers each use one connection (one UDP socket) for the whole run,
opened before the clock starts; half-close workers open a connection per request, as
the protocol wants, and that cost is part of their latency.

The run ends with requests/s, MB/s (payload bytes both ways, 10\\ :sup:`6` bytes) and
latency percentiles; while it runs, a progress bar goes to stderr if stderr is a
terminal.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.error import ConnectError, ConnectionDone, DNSLookupError
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from ..datagram.client import DatagramClientProtocol
from ..frame.client import AnswerTooLarge as FrameAnswerTooLarge
from ..frame.client import FrameClientProtocol, RemoteError, RequestTimeout
from ..frame.pool import FramePool, NoEndpointAvailable, PoolClosed, PoolError
from ..halfclose.client import halfclose_request
from .commands import Call, connect_datagram_client, connect_frame_client, open_pool
from .errors import Status, describe

__all__ = ["BenchResult", "LoadGenerator", "Progress", "Session", "percentile", "session_opener"]


class Session(Protocol):
    """What a worker sends its requests through (a connection, a socket, or none)."""

    def send(self, payload: bytes) -> Deferred[bytes]:
        """Send one request; fire with the answer."""

    def fatal(self, error: Exception) -> bool:
        """Whether ``error`` leaves the session unusable (the worker then stops)."""

    def close(self) -> None:
        """Let go of the connection, if any."""


Opener = Callable[[], Coroutine[Any, Any, Session]]


def percentile(ordered: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile of the sorted ``ordered`` (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class BenchResult:
    """What a run measured.

    :ivar latencies: seconds from sending each answered request to its answer.
    :ivar server_errors: requests the server answered with ERROR.
    :ivar no_answer: requests that failed otherwise (reset, timeout...).
    :ivar not_sent: requests never sent, because every worker had stopped.
    """

    service: str
    endpoint: str
    requests: int
    concurrency: int
    size: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    bytes_sent: int = 0
    bytes_received: int = 0
    server_errors: int = 0
    no_answer: int = 0
    not_sent: int = 0
    first_error: str | None = None

    @property
    def answered(self) -> int:
        """Requests that got their answer."""
        return len(self.latencies)

    @property
    def failed(self) -> int:
        """Requests that did not (sent or not)."""
        return self.server_errors + self.no_answer + self.not_sent

    @property
    def status(self) -> Status:
        """The exit status: every request answered, some ERROR answers only, or worse."""
        if self.no_answer or self.not_sent:
            return Status.NO_ANSWER
        return Status.SERVER_ERROR if self.server_errors else Status.ANSWERED

    def summary(self) -> dict[str, Any]:
        """The result as plain data, for ``--json``."""
        ordered = sorted(self.latencies)
        seconds = self.seconds or 1e-9
        return {
            "service": self.service,
            "endpoint": self.endpoint,
            "requests": self.requests,
            "concurrency": self.concurrency,
            "size": self.size,
            "answered": self.answered,
            "server_errors": self.server_errors,
            "no_answer": self.no_answer,
            "not_sent": self.not_sent,
            "first_error": self.first_error,
            "seconds": round(self.seconds, 6),
            "requests_per_s": round(self.answered / seconds, 1),
            "mb_per_s": round((self.bytes_sent + self.bytes_received) / seconds / 1e6, 6),
            "latency_ms": {
                name: round(percentile(ordered, p) * 1000, 3)
                for name, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
            },
        }

    def text(self) -> str:
        """The human-readable report."""
        s = self.summary()
        lat = s["latency_ms"]
        lines = [
            f"{s['service']} at {s['endpoint']}: {s['requests']} requests of {s['size']} bytes, "
            f"{s['concurrency']} concurrent",
            f"answered    {s['answered']} in {s['seconds']:.3f} s",
            f"throughput  {s['requests_per_s']:.1f} requests/s, {s['mb_per_s']:.3f} MB/s",
            f"latency ms  p50 {lat['p50']:.3f}  p90 {lat['p90']:.3f}  p99 {lat['p99']:.3f}  "
            f"max {lat['max']:.3f}",
        ]
        if self.failed:
            lines.insert(
                2,
                f"failed      {self.failed} ({self.server_errors} server ERROR, {self.no_answer} no answer, "
                f"{self.not_sent} not sent); first: {self.first_error}",
            )
        return "\n".join(lines) + "\n"

    def json(self) -> str:
        """The summary as one line of JSON."""
        return json.dumps(self.summary(), sort_keys=True) + "\n"


class Progress:
    """A one-line progress bar, redrawn in place (for a terminal).

    :param stream: where to draw it.
    :param total: the number of requests of the run.
    :param now: the clock (seconds).
    """

    WIDTH = 30

    def __init__(self, stream: TextIO, total: int, now: Callable[[], float] = time.perf_counter) -> None:
        self.stream = stream
        self.total = total
        self._now = now
        self._started = now()
        self._drawn = False

    def draw(self, done: int) -> None:
        """Redraw the bar for ``done`` requests finished."""
        fraction = done / self.total if self.total else 1.0
        filled = int(fraction * self.WIDTH)
        elapsed = self._now() - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r[{bar}] {done}/{self.total} {fraction:4.0%} {rate:8.0f} req/s")
        self.stream.flush()
        self._drawn = True

    def clear(self) -> None:
        """Erase the bar, so the report starts on a clean line."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False


class LoadGenerator:
    """Run ``result.requests`` requests through ``concurrency`` workers.

    :param reactor: provides ``IReactorTime`` (the progress bar's timer).
    :param open_session: opens one worker's session.
    :param payload: what every request carries.
    :param result: filled in by :meth:`run`; its counts say what to run.
    :param progress: a progress bar to redraw while the run goes, or ``None``.
    :param now: the clock (seconds) latencies are measured with.
    """

    def __init__(
        self,
        reactor: Any,
        open_session: Opener,
        payload: bytes,
        result: BenchResult,
        *,
        progress: Progress | None = None,
        now: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.reactor = reactor
        self.open_session = open_session
        self.payload = payload
        self.result = result
        self.progress = progress
        self._now = now
        self._left = result.requests  # not sent yet
        self._finished = 0  # answered or failed

    @property
    def done(self) -> int:
        """Requests finished, answered or not."""
        return self._finished

    async def run(self) -> BenchResult:
        """Open the sessions, run every request, close the sessions; return the result.

        :raises CommandError: if a session cannot be opened (nothing is measured then).
        """
        workers = min(self.result.concurrency, self.result.requests)
        opening = [ensureDeferred(self.open_session()) for _ in range(workers)]
        opened: list[tuple[bool, Any]] = await DeferredList(opening, consumeErrors=True)
        sessions: list[Session] = [s for ok, s in opened if ok]
        failures: list[Failure] = [f for ok, f in opened if not ok]
        if failures:
            for session in sessions:
                session.close()
            raise describe(failures[0], self.result.endpoint)
        ticker = None
        progress = self.progress
        if progress is not None:
            ticker = LoopingCall(lambda: progress.draw(self.done))
            ticker.clock = self.reactor
            ticker.start(0.1, now=True)
        started = self._now()
        try:
            await DeferredList([ensureDeferred(self._work(s)) for s in sessions])
        finally:
            self.result.seconds = self._now() - started
            if ticker is not None:
                ticker.stop()
            if progress is not None:
                progress.clear()
            for session in sessions:
                session.close()
        self.result.not_sent = self._left
        return self.result

    async def _work(self, session: Session) -> None:
        """One worker: the next request as soon as the previous one is answered."""
        result = self.result
        payload = self.payload
        while self._left > 0:
            self._left -= 1
            sent = self._now()
            try:
                answer = await session.send(payload)
            except Exception as e:
                self._finished += 1
                error = describe(e, result.endpoint)
                if error.status == Status.SERVER_ERROR:
                    result.server_errors += 1
                else:
                    result.no_answer += 1
                if result.first_error is None:
                    result.first_error = error.message
                if session.fatal(e):
                    return
                continue
            result.latencies.append(self._now() - sent)
            self._finished += 1
            result.bytes_sent += len(payload)
            result.bytes_received += len(answer)


class _FrameSession:
    """A frame client: one connection for the whole run."""

    def __init__(self, client: FrameClientProtocol, timeout: float) -> None:
        self.client = client
        self.timeout = timeout

    def send(self, payload: bytes) -> Deferred[bytes]:
        return self.client.request(payload, timeout=self.timeout)

    def fatal(self, error: Exception) -> bool:
        return not isinstance(error, (RemoteError, RequestTimeout, FrameAnswerTooLarge))

    def close(self) -> None:
        self.client.close()


class _PoolSession:
    """A worker of a frame pool (``--endpoint``, ``--connections``): the pool's connections are shared.

    After "every endpoint is down" the worker waits for a reconnection (at most its
    timeout) before its next request, rather than failing every request left at once.
    """

    def __init__(self, pool: FramePool, timeout: float) -> None:
        self.pool = pool
        self.timeout = timeout
        self._wait = False

    def send(self, payload: bytes) -> Deferred[bytes]:
        return Deferred.fromCoroutine(self._send(payload))

    async def _send(self, payload: bytes) -> bytes:
        if self._wait:
            self._wait = False
            with contextlib.suppress(PoolError):
                await self.pool.wait_ready(self.timeout)
        return await self.pool.request(payload, timeout=self.timeout)

    def fatal(self, error: Exception) -> bool:
        self._wait = isinstance(error, NoEndpointAvailable)
        return isinstance(error, PoolClosed)

    def close(self) -> None:
        self.pool.close()


class _DatagramSession:
    """A datagram client: one connected UDP socket for the whole run."""

    def __init__(self, client: DatagramClientProtocol, call: Call) -> None:
        self.client = client
        self.call = call

    def send(self, payload: bytes) -> Deferred[bytes]:
        return self.client.request(payload, timeout=self.call.timeout, retries=self.call.retries)

    def fatal(self, error: Exception) -> bool:
        return isinstance(error, (ConnectError, ConnectionDone))

    def close(self) -> None:
        self.client.close()


class _HalfCloseSession:
    """No lasting connection: each request connects, half-closes and reads to EOF."""

    def __init__(self, reactor: Any, call: Call) -> None:
        self.reactor = reactor
        self.call = call

    def send(self, payload: bytes) -> Deferred[bytes]:
        endpoint: Any = self.call.target.endpoint
        return halfclose_request(endpoint, payload, timeout=self.call.timeout, reactor=self.reactor)

    def fatal(self, error: Exception) -> bool:
        return isinstance(error, (ConnectError, DNSLookupError))

    def close(self) -> None:
        pass


def session_opener(reactor: Any, service: str, call: Call) -> Opener:
    """Return what opens one worker's session to ``call.target`` for ``service``."""

    pools: list[FramePool] = []

    async def frame() -> Session:
        if not call.pool:
            return _FrameSession(await connect_frame_client(reactor, call), call.timeout)
        if not pools:  # the first worker opens the pool the others share
            pools.append(open_pool(reactor, call))
        try:
            await pools[0].wait_ready(call.timeout, fail_fast=True)
        except Exception:
            pools[0].close()
            raise
        return _PoolSession(pools[0], call.timeout)

    async def datagram() -> Session:
        return _DatagramSession(await connect_datagram_client(reactor, call), call)

    async def halfclose() -> Session:
        return _HalfCloseSession(reactor, call)

    openers: dict[str, Opener] = {"frame": frame, "datagram": datagram, "halfclose": halfclose}
    return openers[service]

"""The UDP datagram server: one datagram in, at most one datagram out.

:class:`DatagramServerFactory` holds what one service shares: the handler, the
configuration and the :class:`~sockproto.datagram.stats.DatagramStats`.  It builds a
:class:`DatagramServerProtocol` for each socket the service listens on (a
``DatagramProtocol`` serves one socket), each with its own reply cache.

Two modes:

``spf1`` (the default)
    A datagram is one whole SPF/1 frame.  One whose length field does not match its
    size, that is not SPF/1, shorter than a header or of a kind other than REQUEST and
    PING is dropped without a reply (answering garbage on UDP makes a reflector) and
    counted.  A REQUEST gets a RESPONSE, a PING a PONG, a handler exception ERROR 4, an
    answer too big for one datagram ERROR 2.  A repeated (peer, id) is answered from the
    reply cache, or dropped while its handler still runs.
``raw``
    Each datagram is a request, and the handler's answer is the reply datagram.  An
    answer too big for one datagram, or a failed handler, is logged, counted and dropped.

Handlers see IPv4 peers of a dual-stack socket as plain IPv4, while the reply goes to
the address as the socket reported it (Twisted's UDP ``write`` only takes literals of
the socket's own family).

Abuse resistance (:mod:`sockproto.datagram.guard`): an optional per-source rate limit
(over it, datagrams are dropped, counted ``rate_limited``), and the amplification
guard, on by default: an answer more than ``amplification`` times the size of its
request goes only to a *verified* source; to another one it becomes an ERROR 2
carrying a cookie (SPF/1) or is dropped (raw, counted ``amplification``).  A handler
overrunning ``handler_timeout`` gets ERROR 6 (raw: dropped) and is cancelled.

At shutdown (:meth:`DatagramServerFactory.stop_accepting`, then :meth:`~DatagramServerFactory.drain`)
the sockets stop being read while the handlers already running finish and their
answers are sent; the sockets close after that.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, Final, Literal, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IReactorTime

from ..core.datagram import MAX_UDP_PAYLOAD, MIN_DATAGRAM
from ..handlers import Handler
from ..serving.logs import LogLimiter
from .cache import DEFAULT_CACHE_AGE, DEFAULT_CACHE_BYTES, DEFAULT_CACHE_ENTRIES, ReplyCache
from .guard import DEFAULT_AMPLIFICATION, DEFAULT_TRUSTED, SourceRateLimit, SourceVerifier
from .protocol import DatagramServerProtocol
from .stats import DatagramStats

__all__ = [
    "DEFAULT_MAX_PENDING",
    "MODES",
    "DatagramServerFactory",
    "DatagramServerProtocol",
    "Mode",
]

Mode = Literal["spf1", "raw"]
MODES: Final[tuple[Mode, ...]] = ("spf1", "raw")
"""The wire modes: SPF/1 datagrams, or bare payloads."""

DEFAULT_MAX_PENDING: Final = 1024
"""Handlers allowed to run at once per socket; datagrams past that are dropped."""


class DatagramServerFactory:
    """One datagram service: handler, configuration and counters, shared by its sockets.

    :param handler: called with a :class:`~sockproto.request.Request` per request.
    :param mode: ``"spf1"`` or ``"raw"``.
    :param max_datagram: the largest reply sent, header included (at most 65507).
    :param max_pending: handlers running at once per socket; more datagrams are dropped.
    :param cache_entries: replies kept per socket for retransmissions (SPF/1 mode).
    :param cache_bytes: reply bytes kept per socket.
    :param cache_age: seconds a reply is kept.
    :param handler_timeout: seconds an asynchronous handler has to answer; ``None``:
        no limit.
    :param rate_limit: requests per second allowed per source host (bursts of as many);
        ``None``: no limit.
    :param amplification: the largest answer to an unverified source, as a multiple of
        its request's size; ``None`` disables the guard.
    :param trusted: networks whose sources are verified (loopback by default).
    :param clock: the reactor whose time ages the cache and runs the timeouts (the
        global reactor by default).
    :ivar stats: the service's :class:`~sockproto.datagram.stats.DatagramStats` (also
        ``metrics``).
    :ivar protocols: the protocols serving a socket now.
    :ivar verifier: the :class:`~sockproto.datagram.guard.SourceVerifier` (``None``
        without a guard).
    :raises ValueError: for a setting out of range.
    """

    replies_through_port: ClassVar[bool] = True

    def __init__(
        self,
        handler: Handler,
        *,
        mode: Mode = "spf1",
        max_datagram: int = MAX_UDP_PAYLOAD,
        max_pending: int = DEFAULT_MAX_PENDING,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        cache_age: float = DEFAULT_CACHE_AGE,
        handler_timeout: float | None = None,
        rate_limit: float | None = None,
        amplification: int | None = DEFAULT_AMPLIFICATION,
        trusted: Iterable[str] = DEFAULT_TRUSTED,
        clock: IReactorTime | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if not MIN_DATAGRAM <= max_datagram <= MAX_UDP_PAYLOAD:
            raise ValueError(
                f"max_datagram must be between {MIN_DATAGRAM} and {MAX_UDP_PAYLOAD} bytes, not {max_datagram}"
            )
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, not {max_pending}")
        if cache_entries < 0 or cache_bytes < 0 or cache_age < 0:
            raise ValueError("the reply cache's bounds must not be negative")
        if handler_timeout is not None and not handler_timeout > 0:
            raise ValueError(f"handler_timeout must be positive or None, not {handler_timeout}")
        if amplification is not None and amplification < 1:
            raise ValueError(f"amplification must be at least 1 or None, not {amplification}")
        self.handler = handler
        self.mode: Mode = mode
        self.max_datagram = max_datagram
        self.max_pending = max_pending
        self.cache_entries = cache_entries
        self.cache_bytes = cache_bytes
        self.cache_age = cache_age
        self.handler_timeout = handler_timeout
        self.amplification = amplification
        self.clock = clock
        self.rate_limit = SourceRateLimit(rate_limit, clock=clock) if rate_limit is not None else None
        self.verifier = SourceVerifier(trusted, clock=clock) if amplification is not None else None
        self.stats = self.metrics = DatagramStats()
        self.limiter = LogLimiter(clock)
        self.protocols: set[DatagramServerProtocol] = set()
        self.draining = False
        self._drained: list[Deferred[None]] = []

    def buildProtocol(self, addr: IAddress | None = None) -> DatagramServerProtocol:
        """Return a new protocol to serve one socket of this service."""
        return DatagramServerProtocol(self)

    def make_cache(self) -> ReplyCache:
        """Return a new, empty reply cache with this service's bounds."""
        return ReplyCache(
            self._clock(), max_entries=self.cache_entries, max_bytes=self.cache_bytes, max_age=self.cache_age
        )

    # -- graceful stop (sockproto.serving.service.DrainableFactory) -----------------------------

    def stop_accepting(self) -> None:
        """Stop reading every socket; they stay open for the answers still owed."""
        self.draining = True
        for protocol in list(self.protocols):
            protocol.stop_reading()

    def drain(self) -> Deferred[None]:
        """Fire once no handler runs on any socket."""
        self.draining = True
        if not any(protocol.pending for protocol in self.protocols):
            return succeed(None)
        d: Deferred[None] = Deferred(self._drained.remove)
        self._drained.append(d)
        return d

    def check_drained(self) -> None:
        """A handler finished while draining: fire :meth:`drain`'s Deferreds if it was the last."""
        if self._drained and not any(protocol.pending for protocol in self.protocols):
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def abort(self) -> int:
        """Cancel every handler still running; return how many."""
        running = sum(protocol.pending for protocol in self.protocols)
        for protocol in list(self.protocols):
            protocol.abort()
        return running

    def _clock(self) -> IReactorTime:
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = cast(IReactorTime, reactor)
        return self.clock

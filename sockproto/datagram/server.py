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

Abuse resistance (:mod:`sockproto.core.datagram_guard`): an optional per-source rate limit
(over it, datagrams are dropped, counted ``rate_limited``), and the amplification
guard, on by default: an answer more than ``amplification`` times the size of its
request goes only to a *verified* source; to another one it becomes an ERROR 2
carrying a cookie (SPF/1) or is dropped (raw, counted ``amplification``).  A handler
overrunning ``handler_timeout`` gets ERROR 6 (raw: dropped) and is cancelled.

Sources in the trusted networks (``trusted``: loopback by default) are exempt from
both the rate limit and the amplification guard.

At shutdown (:meth:`DatagramServerFactory.stop_accepting`, then :meth:`~DatagramServerFactory.drain`)
the sockets stop being read while the handlers already running finish and their
answers are sent; the sockets close after that.

The factory holds one :class:`~sockproto.datagram.settings.DatagramSettings`, in a
:class:`~sockproto.datagram.settings.DatagramShared` it gives its protocols: setting an
attribute (``factory.max_pending = 8``) replaces the settings, and every socket,
already serving or not, applies them from its next datagram.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTime

from ..core.datagram import MAX_UDP_PAYLOAD, MODES, Mode
from ..core.datagram_cache import DEFAULT_CACHE_AGE, DEFAULT_CACHE_BYTES, DEFAULT_CACHE_ENTRIES
from ..core.datagram_guard import DEFAULT_AMPLIFICATION, DEFAULT_TRUSTED, SourceRateLimit, SourceVerifier
from ..handlers import Handler
from ..serving.logs import LogLimiter
from ..serving.settings import Setting
from .protocol import DatagramServerProtocol
from .settings import DEFAULT_MAX_PENDING, DatagramSettings, DatagramShared
from .stats import DatagramStats

__all__ = [
    "DEFAULT_MAX_PENDING",
    "MODES",
    "DatagramServerFactory",
    "DatagramServerProtocol",
    "Mode",
]


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
        ``None``: no limit.  Trusted sources are exempt.
    :param amplification: the largest answer to an unverified source, as a multiple of
        its request's size; ``None`` disables the guard.
    :param trusted: networks whose sources are verified and not rate-limited
        (loopback by default).
    :param clock: the reactor whose time ages the cache and runs the timeouts (the
        global reactor by default).
    :ivar settings: the service's :class:`~sockproto.datagram.settings.DatagramSettings`
        (each of its fields is also an attribute of the factory, which can be set).
    :ivar stats: the service's :class:`~sockproto.datagram.stats.DatagramStats` (also
        ``metrics``).
    :ivar protocols: the protocols serving a socket now.
    :ivar verifier: the :class:`~sockproto.core.datagram_guard.SourceVerifier` (``None``
        without a guard).
    :raises ValueError: for a setting out of range.
    """

    replies_through_port: ClassVar[bool] = True

    handler: Setting[Handler] = Setting()
    mode: Setting[Mode] = Setting()
    max_datagram: Setting[int] = Setting()
    max_pending: Setting[int] = Setting()
    cache_entries: Setting[int] = Setting()
    cache_bytes: Setting[int] = Setting()
    cache_age: Setting[float] = Setting()
    handler_timeout: Setting[float | None] = Setting()
    amplification: Setting[int | None] = Setting()
    trusted: Setting[tuple[str, ...]] = Setting()
    clock: Setting[IReactorTime | None] = Setting()

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
        stats = DatagramStats()
        self.shared = DatagramShared(
            DatagramSettings(
                handler, stats, LogLimiter(clock), handler_timeout, clock,
                log=DatagramServerProtocol._log,  # the namespace of the service's events
                mode=mode, max_datagram=max_datagram, max_pending=max_pending,
                cache_entries=cache_entries, cache_bytes=cache_bytes, cache_age=cache_age,
                rate_limit=rate_limit, amplification=amplification, trusted=tuple(trusted),
            )
        )  # fmt: skip
        self.stats = self.metrics = stats

    @property
    def settings(self) -> DatagramSettings:
        """The service's settings (setting them reaches every socket)."""
        return self.shared.settings

    @settings.setter
    def settings(self, settings: DatagramSettings) -> None:
        self.shared.settings = settings

    @property
    def rate_limit(self) -> SourceRateLimit | None:
        """The per-source rate limit (``None``: none); set it to a rate or ``None``."""
        return self.settings.rate

    @rate_limit.setter
    def rate_limit(self, rate: float | None) -> None:
        self.settings = replace_settings(self.settings, rate_limit=rate)

    @property
    def verifier(self) -> SourceVerifier | None:
        """The amplification guard's verifier (``None`` without a guard)."""
        return self.settings.verifier

    @property
    def limiter(self) -> LogLimiter:
        """Rate-limits the service's log events."""
        return self.settings.limiter

    @property
    def protocols(self) -> set[Any]:
        """The protocols serving a socket now."""
        return self.shared.sockets

    @property
    def draining(self) -> bool:
        """Whether :meth:`stop_accepting` was called."""
        return not self.shared.reading

    def buildProtocol(self, addr: IAddress | None = None) -> DatagramServerProtocol:
        """Return a new protocol to serve one socket of this service."""
        return DatagramServerProtocol(self.shared)

    # -- graceful stop (sockproto.serving.service.DrainableFactory) -----------------------------

    def stop_accepting(self) -> None:
        """Stop reading every socket; they stay open for the answers still owed."""
        self.shared.reading = False
        for protocol in list(self.shared.sockets):
            protocol.stop_reading()

    def drain(self) -> Deferred[None]:
        """Fire once no handler runs on any socket."""
        self.shared.reading = False
        return self.shared.pending.idle()

    def abort(self) -> int:
        """Cancel every handler still running (their answers are not sent); return how many."""
        return self.shared.pending.cancel_all()


def replace_settings(settings: DatagramSettings, **changes: Any) -> DatagramSettings:
    """``settings`` with ``changes``, validated again."""
    from dataclasses import replace

    return replace(settings, **changes)

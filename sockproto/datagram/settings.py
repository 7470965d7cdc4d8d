"""What the sockets of one datagram service share: one frozen settings object, and its state.

:class:`DatagramSettings` holds the configuration, validated in ``__post_init__`` (the
one place), and the objects made of it (the rate limit, the verifier).  A factory
changes a setting by replacing the settings (:class:`~sockproto.serving.settings.Setting`);
the rate limit and the verifier are carried over when their own settings did not
change, so that a source keeps its bucket and its cookie.

:class:`DatagramShared` is what the factory and its protocols both hold: the current
settings, the service's :class:`~sockproto.serving.answering.PendingWork` and the
protocols serving a socket.  A protocol reads ``shared.settings`` on each datagram, so
a changed setting reaches every socket at once; neither knows the other's class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.datagram import MAX_UDP_PAYLOAD, MIN_DATAGRAM, MODES, Mode
from ..core.datagram_cache import DEFAULT_CACHE_AGE, DEFAULT_CACHE_BYTES, DEFAULT_CACHE_ENTRIES
from ..core.datagram_guard import (
    DEFAULT_AMPLIFICATION,
    DEFAULT_TRUSTED,
    SourceRateLimit,
    SourceVerifier,
    TrustedNetworks,
)
from ..serving.answering import PendingWork
from ..serving.settings import ServiceSettings

__all__ = ["DEFAULT_MAX_PENDING", "DatagramSettings", "DatagramShared"]

DEFAULT_MAX_PENDING = 1024
"""Handlers allowed to run at once per socket; datagrams past that are dropped."""


@dataclass(frozen=True, slots=True, eq=False)
class DatagramSettings(ServiceSettings):
    """A datagram service's settings (see :class:`~sockproto.datagram.server.DatagramServerFactory`).

    :ivar rate: the :class:`~sockproto.core.datagram_guard.SourceRateLimit` (derived;
        ``None`` without ``rate_limit``).
    :ivar verifier: the :class:`~sockproto.core.datagram_guard.SourceVerifier` (derived;
        ``None`` without ``amplification``).
    :raises ValueError: for a setting out of range.
    """

    mode: Mode = "spf1"
    max_datagram: int = MAX_UDP_PAYLOAD
    max_pending: int = DEFAULT_MAX_PENDING
    cache_entries: int = DEFAULT_CACHE_ENTRIES
    cache_bytes: int = DEFAULT_CACHE_BYTES
    cache_age: float = DEFAULT_CACHE_AGE
    rate_limit: float | None = None
    amplification: int | None = DEFAULT_AMPLIFICATION
    trusted: tuple[str, ...] = DEFAULT_TRUSTED
    rate: SourceRateLimit | None = field(default=None, repr=False)
    verifier: SourceVerifier | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        ServiceSettings.__post_init__(self)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not MIN_DATAGRAM <= self.max_datagram <= MAX_UDP_PAYLOAD:
            limits = f"between {MIN_DATAGRAM} and {MAX_UDP_PAYLOAD} bytes"
            raise ValueError(f"max_datagram must be {limits}, not {self.max_datagram}")
        if self.max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, not {self.max_pending}")
        if self.cache_entries < 0 or self.cache_bytes < 0 or self.cache_age < 0:
            raise ValueError("the reply cache's bounds must not be negative")
        if self.amplification is not None and self.amplification < 1:
            raise ValueError(f"amplification must be at least 1 or None, not {self.amplification}")
        trusted = tuple(str(n) for n in self.trusted)
        object.__setattr__(self, "trusted", trusted)
        verifier = self.verifier
        if verifier is None or tuple(str(n) for n in verifier.trusted) != _networks(trusted):
            verifier = SourceVerifier(trusted, clock=self.clock)
        networks = verifier.networks
        object.__setattr__(self, "verifier", verifier if self.amplification is not None else None)
        rate = self.rate
        if self.rate_limit is None:
            rate = None
        elif rate is None or rate.rate != self.rate_limit or rate.trusted.networks != networks.networks:
            rate = SourceRateLimit(self.rate_limit, clock=self.clock, trusted=networks)
        object.__setattr__(self, "rate", rate)


def _networks(trusted: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(str(n) for n in TrustedNetworks(trusted).networks)


class DatagramShared:
    """The mutable state one datagram service's factory and protocols share (see the module).

    :ivar settings: the service's current :class:`DatagramSettings`.
    :ivar pending: the handler calls running on any of its sockets.
    :ivar sockets: the protocols serving a socket now.
    :ivar reading: ``False`` once the service stopped reading (draining).
    """

    __slots__ = ("pending", "reading", "settings", "sockets")

    def __init__(self, settings: DatagramSettings) -> None:
        self.settings = settings
        self.pending = PendingWork()
        self.sockets: set[Any] = set()
        self.reading = True

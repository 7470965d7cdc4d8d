"""UDP abuse resistance: a per-source rate limit, and which sources are *verified*.

A UDP source address is only a claim: anyone can send datagrams that claim to come from
someone else, and the replies then go to that someone.  Two defences follow.

:class:`SourceRateLimit`
    A token bucket per source host: ``rate`` requests per second on average, bursts of
    ``burst``.  Each bucket is one number, the time it will be full again (the "generic
    cell rate algorithm" form of a token bucket, one lookup and a few float operations
    per datagram): a request takes a token by moving that time ``1 / rate`` later,
    unless that would put it over ``burst / rate`` ahead of now.  At most
    ``max_sources`` buckets are kept (the least recently active source is forgotten
    first), so a flood from spoofed addresses costs bounded memory; per-source limits
    cannot stop such a flood (each address is new), the pending limit and the kernel's
    socket buffer bound it.

:class:`SourceVerifier`
    The amplification guard of the datagram server sends an *unverified* source no
    answer larger than ``N`` times its request.  A source is **verified** when

    - its address is in a *trusted network*: loopback by default (the kernel refuses
      a loopback source arriving from outside, so it cannot be spoofed from off the
      host), or any network given (``--trusted``, for instance a private network whose
      edge drops spoofed packets); or
    - it proved that it receives our replies: the guard's ERROR 2 carries a cookie
      (``cookie=`` and 12 hex digits, first in the message), a keyed hash of the source
      host and the current minute; a PING whose payload is that text (sockproto's
      client sends it by itself) verifies the host for ``lifetime`` seconds.  A spoofer
      never sees the cookie, so it cannot verify the address it spoofs.

Trusted networks (:class:`TrustedNetworks`) exempt their sources from both: a
loopback client (``sockproto bench``, a co-located service) is neither rate-limited
nor guarded.  Whether a host is in one is computed once per host and remembered.

Both tables are keyed by host, not port: a client's replies reach its host.

Plain Python (the sans-IO rule): time comes from a clock object with a ``seconds()``
method (a Twisted reactor or ``Clock`` fits), the wall clock by default.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Final, Protocol

from .datagram import COOKIE_PREFIX

__all__ = [
    "COOKIE_PREFIX",
    "DEFAULT_AMPLIFICATION",
    "DEFAULT_MAX_SOURCES",
    "DEFAULT_TRUSTED",
    "DEFAULT_VERIFIED_FOR",
    "SourceRateLimit",
    "SourceVerifier",
    "TimeSource",
    "TrustedNetworks",
    "parse_network",
]

DEFAULT_AMPLIFICATION: Final = 3
"""An answer to an unverified source is at most this many times its request's size."""

DEFAULT_MAX_SOURCES: Final = 4096
"""Sources a rate limit or a verifier remembers at most."""

DEFAULT_TRUSTED: Final = ("127.0.0.0/8", "::1/128")
"""Networks whose sources are verified by default: loopback."""

DEFAULT_VERIFIED_FOR: Final = 600.0
"""Seconds a cookie keeps a source verified."""


_COOKIE_WINDOW: Final = 60.0  # a cookie is valid in its minute and the next
_COOKIE_DIGITS: Final = 12  # hex digits: 48 bits a blind spoofer would have to guess
_TRUSTED_CACHE: Final = 1024  # hosts whose trusted-network check is remembered


class TimeSource(Protocol):
    """Anything that tells the time in seconds: a reactor, a ``Clock``, :class:`WallClock`."""

    def seconds(self) -> float: ...


class WallClock:
    """The wall clock (what a reactor's ``seconds()`` returns)."""

    __slots__ = ()

    def seconds(self) -> float:
        return time.time()


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Parse a network such as ``10.0.0.0/8``, ``fd00::/8`` or one address.

    :raises ValueError: naming what is wrong.
    """
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as e:
        raise ValueError(f"expected a network like 10.0.0.0/8 or fd00::/8, got {text!r} ({e})") from None


class TrustedNetworks:
    """Networks whose sources are trusted; ``host in networks`` is one dict lookup once known.

    :param networks: networks as text (``10.0.0.0/8``) or parsed.
    """

    __slots__ = ("_known", "networks")

    def __init__(self, networks: Iterable[str | Network] = DEFAULT_TRUSTED) -> None:
        self.networks: tuple[Network, ...] = tuple(
            n if not isinstance(n, str) else parse_network(n) for n in networks
        )
        self._known: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, host: object) -> bool:
        known: bool | None = self._known.get(host)  # type: ignore[call-overload]
        if known is None:
            known = self._lookup(str(host))
        return known

    def _lookup(self, host: str) -> bool:
        """Whether ``host`` is in a network (remembered, at most ``_TRUSTED_CACHE`` hosts)."""
        try:
            address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            trusted = False
        else:
            mapped = getattr(address, "ipv4_mapped", None)
            address = mapped if mapped is not None else address
            trusted = any(address in network for network in self.networks)
        if len(self._known) >= _TRUSTED_CACHE:
            self._known.clear()
        self._known[host] = trusted
        return trusted


class SourceRateLimit:
    """Token buckets by source host.

    :param rate: requests per second allowed on average per source.
    :param burst: requests a source may send at once (``rate`` rounded up, at least 1,
        by default).
    :param clock: gives the time (the wall clock by default).
    :param max_sources: buckets kept at most.
    :param trusted: sources exempt from the limit (none by default); a trusted host
        never gets a bucket, so the check costs only a bucket miss and one lookup.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: TimeSource | None = None,
        max_sources: int = DEFAULT_MAX_SOURCES,
        trusted: TrustedNetworks | Iterable[str | Network] = (),
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, not {rate}")
        if max_sources < 1:
            raise ValueError(f"max_sources must be at least 1, not {max_sources}")
        self.rate = rate
        self.burst = float(burst if burst is not None else max(1, -(-rate // 1)))
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst}")
        self.clock: TimeSource = clock if clock is not None else WallClock()
        self.max_sources = max_sources
        self.trusted = trusted if isinstance(trusted, TrustedNetworks) else TrustedNetworks(trusted)
        self._interval = 1.0 / rate  # the time one token takes to come back
        # How far ahead of now a bucket may be full again, with a hair of slack so that
        # float rounding never refuses the burst's last token.
        self._window = self.burst / rate * (1 + 1e-9)
        self._full_at: OrderedDict[str, float] = OrderedDict()  # host: when its bucket is full

    def __len__(self) -> int:
        """Sources remembered."""
        return len(self._full_at)

    def allow(self, host: str) -> bool:
        """Take a token from ``host``'s bucket; whether it had one (always, for a trusted host)."""
        buckets = self._full_at
        full_at = buckets.get(host)
        if full_at is None and host in self.trusted:
            return True
        now = self.clock.seconds()
        if full_at is None:
            if len(buckets) >= self.max_sources:
                buckets.popitem(last=False)  # the least recently active source
            buckets[host] = now + self._interval
            return True
        buckets.move_to_end(host)
        full_at = (full_at if full_at > now else now) + self._interval
        if full_at - now > self._window:
            return False  # no token left: the bucket stays as it was
        buckets[host] = full_at
        return True


class SourceVerifier:
    """Tell verified sources (see the module's description) from unverified ones.

    :param trusted: networks whose every address is verified.
    :param clock: gives the time (the wall clock by default).
    :param secret: keys the cookies (random by default, so a restart changes them).
    :param lifetime: seconds a cookie keeps a host verified.
    :param max_verified: hosts verified by cookie remembered at most (the oldest go first).
    """

    def __init__(
        self,
        trusted: TrustedNetworks | Iterable[str | Network] = DEFAULT_TRUSTED,
        *,
        clock: TimeSource | None = None,
        secret: bytes | None = None,
        lifetime: float = DEFAULT_VERIFIED_FOR,
        max_verified: int = DEFAULT_MAX_SOURCES,
    ) -> None:
        self.networks = trusted if isinstance(trusted, TrustedNetworks) else TrustedNetworks(trusted)
        self.trusted = self.networks.networks
        self.clock: TimeSource = clock if clock is not None else WallClock()
        self.lifetime = lifetime
        self.max_verified = max_verified
        self._secret = secret if secret is not None else os.urandom(32)
        self._verified: OrderedDict[str, float] = OrderedDict()  # host: until when

    def is_verified(self, host: str) -> bool:
        """Whether ``host`` may get answers of any size."""
        if host in self.networks:  # the common case: a known host, one lookup
            return True
        until = self._verified.get(host)
        if until is not None:
            if self.clock.seconds() < until:
                return True
            del self._verified[host]
        return False

    def cookie(self, host: str) -> bytes:
        """The cookie that verifies ``host`` now: ``cookie=`` and 12 hex digits."""
        return COOKIE_PREFIX + self._digest(host, int(self.clock.seconds() // _COOKIE_WINDOW))

    def redeem(self, host: str, payload: bytes) -> bool:
        """Verify ``host`` if ``payload`` is a cookie of this minute or the last for it."""
        if not payload.startswith(COOKIE_PREFIX) or len(payload) != len(COOKIE_PREFIX) + _COOKIE_DIGITS:
            return False
        now = self.clock.seconds()
        window = int(now // _COOKIE_WINDOW)
        given = payload[len(COOKIE_PREFIX) :]
        if not any(hmac.compare_digest(given, self._digest(host, w)) for w in (window, window - 1)):
            return False
        verified = self._verified
        verified.pop(host, None)
        if len(verified) >= self.max_verified:
            verified.popitem(last=False)
        verified[host] = now + self.lifetime
        return True

    def _digest(self, host: str, window: int) -> bytes:
        mac = hmac.new(self._secret, f"{host}|{window}".encode(), hashlib.sha256)
        return mac.hexdigest()[:_COOKIE_DIGITS].encode("ascii")

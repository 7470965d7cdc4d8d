"""The reply cache that makes UDP retransmissions safe.

A client that hears nothing sends its request again with the same id.  If the first
copy was served and only the reply was lost, running the handler again would repeat
its effects; instead the server answers the repeat with the reply it already sent.
While the handler of a (peer, id) is still running, a repeat is dropped: the answer on
its way serves it.

The cache holds at most ``max_entries`` replies and ``max_bytes`` reply bytes, each
for at most ``max_age`` seconds, so it costs bounded memory whatever the peers send.

Plain Python (the sans-IO rule): the clock is any object with ``seconds()``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Final

from .datagram_guard import TimeSource

__all__ = [
    "DEFAULT_CACHE_AGE",
    "DEFAULT_CACHE_BYTES",
    "DEFAULT_CACHE_ENTRIES",
    "IN_PROGRESS",
    "InProgress",
    "ReplyCache",
]

DEFAULT_CACHE_ENTRIES: Final = 1024
"""Replies kept by default."""

DEFAULT_CACHE_BYTES: Final = 8 * 1024 * 1024
"""Reply bytes kept by default (8 MiB)."""

DEFAULT_CACHE_AGE: Final = 30.0
"""Seconds a reply is kept by default: longer than a client keeps retransmitting."""


class InProgress:
    """The type of :data:`IN_PROGRESS`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "IN_PROGRESS"


IN_PROGRESS: Final = InProgress()
"""What :meth:`ReplyCache.lookup` returns while the handler for a key is running."""


class ReplyCache:
    """Replies by key (a peer and a request id), bounded in entries, bytes and age.

    :param clock: gives the time (the reactor, or a :class:`~twisted.internet.task.Clock`).
    :param max_entries: replies kept at most; the oldest go first.
    :param max_bytes: reply bytes kept at most; the oldest go first.
    :param max_age: seconds a reply is kept; older ones are never returned.

    Keys marked in progress are not bounded here: the caller bounds the handlers it
    runs at once.
    """

    def __init__(
        self,
        clock: TimeSource,
        *,
        max_entries: int = DEFAULT_CACHE_ENTRIES,
        max_bytes: int = DEFAULT_CACHE_BYTES,
        max_age: float = DEFAULT_CACHE_AGE,
    ) -> None:
        if max_entries < 0 or max_bytes < 0 or max_age < 0:
            raise ValueError("the reply cache's bounds must not be negative")
        self.clock = clock
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_age = max_age
        # Insertion order is age order (every entry lives max_age): the oldest is first.
        self._replies: OrderedDict[Hashable, tuple[float, bytes]] = OrderedDict()
        self._running: set[Hashable] = set()
        self._bytes = 0

    def __len__(self) -> int:
        """Replies held (expired ones not yet evicted included)."""
        return len(self._replies)

    @property
    def size(self) -> int:
        """Reply bytes held."""
        return self._bytes

    @property
    def running(self) -> int:
        """Keys marked in progress."""
        return len(self._running)

    def lookup(self, key: Hashable) -> bytes | InProgress | None:
        """Return the reply stored for ``key``, :data:`IN_PROGRESS`, or ``None``."""
        if key in self._running:
            return IN_PROGRESS
        entry = self._replies.get(key)
        if entry is None:
            return None
        if self.clock.seconds() - entry[0] > self.max_age:
            self._evict(key)
            return None
        return entry[1]

    def begin(self, key: Hashable) -> None:
        """Mark ``key`` in progress: its handler is running."""
        self._running.add(key)

    def finish(self, key: Hashable, reply: bytes | None) -> None:
        """End ``key``'s run; store ``reply`` for it unless it is ``None``."""
        self._running.discard(key)
        if reply is not None:
            self.store(key, reply)

    def store(self, key: Hashable, reply: bytes) -> None:
        """Store ``reply`` for ``key`` (replacing any), then enforce the bounds."""
        replies = self._replies
        now = self.clock.seconds()
        old = replies.pop(key, None)
        if old is not None:
            self._bytes -= len(old[1])
        if len(reply) <= self.max_bytes and self.max_entries > 0:
            replies[key] = (now, reply)
            self._bytes += len(reply)
        while len(replies) > self.max_entries or self._bytes > self.max_bytes:
            self._bytes -= len(replies.popitem(last=False)[1][1])
        self._expire(now)

    def clear(self) -> None:
        """Forget every reply and every in-progress mark."""
        self._replies.clear()
        self._running.clear()
        self._bytes = 0

    def _expire(self, now: float) -> None:
        """Evict the expired replies, oldest first."""
        replies = self._replies
        oldest = now - self.max_age
        while replies and next(iter(replies.values()))[0] < oldest:
            self._bytes -= len(replies.popitem(last=False)[1][1])

    def _evict(self, key: Hashable) -> None:
        _, reply = self._replies.pop(key)
        self._bytes -= len(reply)

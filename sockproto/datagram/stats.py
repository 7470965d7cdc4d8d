"""The counters of a datagram service: what came in, what went out, what was dropped why."""

from __future__ import annotations

from ..core.datagram import DropReason

__all__ = ["DatagramStats"]


class DatagramStats:
    """Counters shared by every port of one datagram service.

    Every datagram received is either answered (by the handler, from the reply cache,
    or with a PONG), dropped for one :class:`~sockproto.core.datagram.DropReason`, or
    still being handled.

    :ivar received: datagrams received.
    :ivar handled: handler calls started.
    :ivar replied: reply datagrams sent (cached ones and PONGs included).
    :ivar from_cache: retransmissions answered from the reply cache.
    :ivar drops: datagrams dropped, by reason (every reason is present, from 0).
    """

    __slots__ = ("drops", "from_cache", "handled", "received", "replied")

    def __init__(self) -> None:
        self.received = 0
        self.handled = 0
        self.replied = 0
        self.from_cache = 0
        self.drops: dict[DropReason, int] = dict.fromkeys(DropReason, 0)

    def drop(self, reason: DropReason) -> None:
        """Count one datagram dropped for ``reason``."""
        self.drops[reason] += 1

    @property
    def dropped(self) -> int:
        """Datagrams dropped, all reasons together."""
        return sum(self.drops.values())

    def as_dict(self) -> dict[str, int]:
        """Every counter by name, drops as ``dropped_<reason>`` (for logs and metrics)."""
        counts = {
            "received": self.received,
            "handled": self.handled,
            "replied": self.replied,
            "from_cache": self.from_cache,
            "dropped": self.dropped,
        }
        counts.update((f"dropped_{reason.value}", n) for reason, n in self.drops.items())
        return counts

    def __repr__(self) -> str:
        drops = ", ".join(f"{r.value}={n}" for r, n in self.drops.items() if n)
        return (
            f"<DatagramStats received={self.received} handled={self.handled} replied={self.replied} "
            f"from_cache={self.from_cache} dropped={self.dropped}{' (' + drops + ')' if drops else ''}>"
        )

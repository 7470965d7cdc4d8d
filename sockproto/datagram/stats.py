"""The counters of a datagram service: what came in, what went out, what was dropped why."""

from __future__ import annotations

from ..core.datagram import DropReason
from ..serving.metrics import ServiceMetrics

__all__ = ["DatagramStats"]


class DatagramStats(ServiceMetrics):
    """Counters shared by every port of one datagram service.

    A :class:`~sockproto.serving.metrics.ServiceMetrics` (``requests``, ``answers``,
    ``errors``, ``pings``, ``cache_hits``, ``bytes_in``, ``bytes_out``, ``in_flight``...;
    the ``connections_*`` counters stay 0) with the datagram service's own.  Every
    datagram received is either answered (by the handler, from the reply cache, or with
    a PONG), dropped for one :class:`~sockproto.core.datagram.DropReason`, or still being
    handled.

    The common case, a synchronous handler whose answer is sent at once, is counted
    once, in :attr:`served`, instead of in four counters: :attr:`received`,
    :attr:`requests`, :attr:`answers` and :attr:`replied` each add :attr:`served` to
    their own count (assigning one of them sets that count, so ``+=`` works as on a
    plain counter).

    :ivar served: datagrams received, given to the handler, answered and sent in one go
        (included in :attr:`received`, :attr:`requests`, :attr:`answers` and
        :attr:`replied`).
    :ivar guarded: replies the amplification guard stopped (SPF/1: sent as an ERROR 2
        with a cookie instead; raw: dropped, also counted as ``amplification``).
    :ivar drops: datagrams dropped, by reason (every reason is present, from 0).
    """

    __slots__ = ("_answers", "_received", "_replied", "_requests", "drops", "guarded", "served")

    def __init__(self, service: str = "datagram") -> None:
        self.served = 0
        self._received = self._replied = 0
        super().__init__(service)
        self.guarded = 0
        self.drops: dict[DropReason, int] = dict.fromkeys(DropReason, 0)

    @property
    def received(self) -> int:
        """Datagrams received."""
        return self._received + self.served

    @received.setter
    def received(self, value: int) -> None:
        self._received = value - self.served

    @property
    def requests(self) -> int:
        """Requests given to the handler."""
        return self._requests + self.served

    @requests.setter
    def requests(self, value: int) -> None:
        self._requests = value - self.served

    @property
    def answers(self) -> int:
        """Answers sent (an ERROR is counted in ``errors`` instead)."""
        return self._answers + self.served

    @answers.setter
    def answers(self, value: int) -> None:
        self._answers = value - self.served

    @property
    def replied(self) -> int:
        """Reply datagrams sent (cached ones, PONGs and ERRORs included)."""
        return self._replied + self.served

    @replied.setter
    def replied(self, value: int) -> None:
        self._replied = value - self.served

    @property
    def handled(self) -> int:
        """Handler calls started (:attr:`requests`)."""
        return self.requests

    @property
    def from_cache(self) -> int:
        """Retransmissions answered from the reply cache (:attr:`cache_hits`)."""
        return self.cache_hits

    def drop(self, reason: DropReason) -> None:
        """Count one datagram dropped for ``reason``."""
        self.drops[reason] += 1

    @property
    def dropped(self) -> int:
        """Datagrams dropped, all reasons together."""
        return sum(self.drops.values())

    def as_dict(self) -> dict[str, int]:
        """Every counter by name, drops as ``dropped_<reason>`` (for logs and metrics)."""
        counts = super().as_dict()
        counts.update(
            received=self.received,
            handled=self.requests,
            replied=self.replied,
            from_cache=self.cache_hits,
            guarded=self.guarded,
            dropped=self.dropped,
        )
        counts.update((f"dropped_{reason.value}", n) for reason, n in self.drops.items())
        return counts

    def __repr__(self) -> str:
        drops = ", ".join(f"{r.value}={n}" for r, n in self.drops.items() if n)
        return (
            f"<DatagramStats received={self.received} handled={self.requests} replied={self.replied} "
            f"from_cache={self.cache_hits} dropped={self.dropped}{' (' + drops + ')' if drops else ''}>"
        )

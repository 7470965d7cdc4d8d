"""The counters of one sockproto service, shared by its protocols.

One :class:`ServiceMetrics` per service (``factory.metrics``): the protocols add to it
as they work, and whoever wants to know reads it, in process (tests, logs, a health
check) or over HTTP in Prometheus format (:mod:`sockproto.serving.prometheus`, ``--metrics``).

The counters are plain integer attributes, so counting costs an addition.  Hot paths
count per read or per batch, never per frame: the frame server adds the requests a
read carried once that read is served.

Every request ends in exactly one of: an answer, an error, or abandonment (its
connection lost, or aborted at shutdown); so, for a service at rest,
``requests == answers + sum(errors.values()) + abandoned``, and while it works the
difference is :attr:`~ServiceMetrics.in_flight` (handlers running).
"""

from __future__ import annotations

from typing import Final

from ..core.spf1 import ErrorCode

__all__ = ["SERVICE_KINDS", "ServiceMetrics"]

SERVICE_KINDS: Final = ("frame", "datagram", "halfclose")
"""The service names metrics are labelled with."""


class ServiceMetrics:
    """Counters of one service.

    :param service: the service's name (``frame``, ``datagram``, ``halfclose``, or any
        label of your own), used as the ``service`` label of exported metrics.

    :ivar connections_open: stream connections open now (a gauge).
    :ivar connections_total: stream connections accepted since the start.
    :ivar connections_refused: stream connections refused at once (``max_connections``
        reached, or the service shutting down).
    :ivar requests: requests given to the handler.
    :ivar answers: answers sent (RESPONSE frames, reply datagrams, half-close answers).
    :ivar errors: errors by :class:`~sockproto.core.spf1.ErrorCode`: ERROR frames or
        datagrams sent, and for a transport without an error channel (a bare length
        prefix, half-close) the closes and resets that stand for them.
    :ivar abandoned: requests whose answer was never sent: the connection was lost,
        or aborted at the end of a shutdown's drain.
    :ivar pings: PINGs answered with a PONG (not requests: the handler is not called).
    :ivar bytes_in: bytes received (datagrams: whole datagrams).
    :ivar bytes_out: bytes sent.
    :ivar in_flight: handlers running now, whose answer is awaited (a gauge).
    :ivar cache_hits: retransmissions answered from the reply cache (datagram).
    :ivar reads_paused: times a streaming handler's body buffer filled and reading paused
        (half-close and frame streaming: the client's sends block until the handler
        catches up).
    :ivar answers_paused: times a slow client paused a streamed answer (its transport's
        buffer was full).
    """

    __slots__ = (
        "abandoned",
        "answers",
        "answers_paused",
        "bytes_in",
        "bytes_out",
        "cache_hits",
        "connections_open",
        "connections_refused",
        "connections_total",
        "errors",
        "in_flight",
        "pings",
        "reads_paused",
        "requests",
        "service",
    )

    def __init__(self, service: str) -> None:
        self.service = service
        self.connections_open = 0
        self.connections_total = 0
        self.connections_refused = 0
        self.requests = 0
        self.answers = 0
        self.errors: dict[ErrorCode, int] = dict.fromkeys(ErrorCode, 0)
        self.abandoned = 0
        self.pings = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.in_flight = 0
        self.cache_hits = 0
        self.reads_paused = 0
        self.answers_paused = 0

    def error(self, code: ErrorCode) -> None:
        """Count one error answered (or standing for one) with ``code``."""
        self.errors[code] += 1

    def as_dict(self) -> dict[str, int]:
        """Every counter by name; errors as ``errors_<name>`` (``errors_timeout``...)."""
        counts = {
            "connections_open": self.connections_open,
            "connections_total": self.connections_total,
            "connections_refused": self.connections_refused,
            "requests": self.requests,
            "answers": self.answers,
            "errors": sum(self.errors.values()),
            "abandoned": self.abandoned,
            "pings": self.pings,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "in_flight": self.in_flight,
            "cache_hits": self.cache_hits,
            "reads_paused": self.reads_paused,
            "answers_paused": self.answers_paused,
        }
        counts.update((f"errors_{code.name.lower()}", n) for code, n in self.errors.items())
        return counts

    def __repr__(self) -> str:
        errors = ", ".join(f"{code.name.lower()}={n}" for code, n in self.errors.items() if n)
        return (
            f"<{type(self).__name__} {self.service} connections={self.connections_open} "
            f"requests={self.requests} answers={self.answers} in_flight={self.in_flight}"
            f"{' errors: ' + errors if errors else ''}>"
        )

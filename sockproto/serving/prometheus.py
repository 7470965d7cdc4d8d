"""The services' counters over HTTP, in Prometheus text format (``--metrics ENDPOINT``).

Optional: it needs the ``prometheus_client`` package (``pip install 'sockproto[metrics]'``),
and uses its Twisted support, :class:`prometheus_client.twisted.MetricsResource`, served
by :class:`twisted.web.server.Site` on any stream endpoint string::

    twistd -n sockproto-frame --metrics tcp:9100:interface=127.0.0.1
    curl http://127.0.0.1:9100/metrics

Every :class:`~sockproto.serving.metrics.ServiceMetrics` given becomes a set of ``sockproto_*``
series labelled by ``service`` (plus ``code``, ``name`` for errors and ``reason`` for
dropped datagrams), read fresh at each scrape; the process's own series (memory, open
file descriptors, CPU) come with them.  ``MetricsResource`` renders in a thread of the
reactor's pool, so a scrape never blocks serving; the counters are plain integers,
read without locks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from .metrics import ServiceMetrics
from .service import Listenable, ListeningService

__all__ = ["MISSING", "SockprotoCollector", "metrics_registry", "metrics_resource", "metrics_service"]

MISSING = (
    "--metrics needs the prometheus_client package, which is not installed: "
    "pip install 'sockproto[metrics]' (or prometheus_client)"
)
"""The error when ``prometheus_client`` cannot be imported."""


def available() -> bool:
    """Whether ``prometheus_client`` (with its Twisted support) can be imported."""
    try:
        import prometheus_client.twisted  # noqa: F401
    except ImportError:
        return False
    return True


_COUNTERS = (
    ("connections", "connections_total", "Stream connections accepted."),
    (
        "connections_refused",
        "connections_refused",
        "Stream connections refused (limit reached, or stopping).",
    ),
    ("requests", "requests", "Requests received (given to the handler, or refused)."),
    ("answers", "answers", "Answers sent."),
    (
        "abandoned",
        "abandoned",
        "Requests whose connection was lost, or aborted at shutdown, before the answer.",
    ),
    ("pings", "pings", "PINGs answered."),
    ("received_bytes", "bytes_in", "Bytes received."),
    ("sent_bytes", "bytes_out", "Bytes sent."),
    ("reply_cache_hits", "cache_hits", "Retransmissions answered from the reply cache."),
    ("reads_paused", "reads_paused", "Times a streaming handler's full body buffer paused reading."),
    ("answers_paused", "answers_paused", "Times a slow client paused a streamed answer."),
)
_GAUGES = (
    ("connections_open", "connections_open", "Stream connections open now."),
    ("in_flight", "in_flight", "Handlers running now."),
)


class SockprotoCollector:
    """A ``prometheus_client`` collector of sockproto services' counters.

    :param metrics: the :class:`~sockproto.serving.metrics.ServiceMetrics` of each service
        (``factory.metrics``).
    """

    def __init__(self, metrics: Iterable[ServiceMetrics]) -> None:
        self.metrics = list(metrics)

    def collect(self) -> Iterator[Any]:
        """Yield the metric families, read now."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for name, attribute, doc in _COUNTERS:
            counter = CounterMetricFamily(f"sockproto_{name}", doc, labels=["service"])
            for m in self.metrics:
                counter.add_metric([m.service], getattr(m, attribute))
            yield counter
        for name, attribute, doc in _GAUGES:
            gauge = GaugeMetricFamily(f"sockproto_{name}", doc, labels=["service"])
            for m in self.metrics:
                gauge.add_metric([m.service], getattr(m, attribute))
            yield gauge
        errors = CounterMetricFamily(
            "sockproto_errors", "Errors answered (or resets standing for them), by code.",
            labels=["service", "code", "name"],
        )  # fmt: skip
        for m in self.metrics:
            for code, n in dict(m.errors).items():
                errors.add_metric([m.service, str(int(code)), code.name.lower()], n)
        yield errors
        datagrams = [m for m in self.metrics if hasattr(m, "drops")]
        if datagrams:
            yield from _datagram_families(datagrams, CounterMetricFamily)


def _datagram_families(stats: list[Any], counter_family: Any) -> Iterator[Any]:
    received = counter_family("sockproto_datagrams_received", "Datagrams received.", labels=["service"])
    sent = counter_family("sockproto_datagrams_sent", "Reply datagrams sent.", labels=["service"])
    guarded = counter_family(
        "sockproto_amplification_guarded", "Replies stopped by the amplification guard.", labels=["service"]
    )
    dropped = counter_family(
        "sockproto_datagrams_dropped",
        "Datagrams dropped without a reply, by reason.",
        labels=["service", "reason"],
    )
    for s in stats:
        received.add_metric([s.service], s.received)
        sent.add_metric([s.service], s.replied)
        guarded.add_metric([s.service], s.guarded)
        for reason, n in dict(s.drops).items():
            dropped.add_metric([s.service, reason.value], n)
    yield from (received, sent, guarded, dropped)


def metrics_registry(metrics: Iterable[ServiceMetrics], *, process: bool = True) -> Any:
    """A new ``CollectorRegistry`` with the services' series (and the process's).

    :raises ImportError: with :data:`MISSING` when ``prometheus_client`` is missing.
    """
    try:
        from prometheus_client import CollectorRegistry, ProcessCollector
    except ImportError as e:
        raise ImportError(MISSING) from e
    registry = CollectorRegistry()
    registry.register(SockprotoCollector(metrics))
    if process:
        ProcessCollector(registry=registry)
    return registry


def metrics_resource(metrics: Iterable[ServiceMetrics]) -> Any:
    """A Twisted web resource rendering the services' series (``prometheus_client.twisted``)."""
    registry = metrics_registry(metrics)
    from prometheus_client.twisted import MetricsResource

    return MetricsResource(registry=registry)  # type: ignore[no-untyped-call]


def metrics_service(
    description: str, endpoint: Listenable, metrics: Iterable[ServiceMetrics]
) -> ListeningService:
    """A service serving the metrics at ``/metrics`` (and ``/``) on ``endpoint`` while it runs."""
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    resource = metrics_resource(metrics)
    root = Resource()
    root.putChild(b"metrics", resource)
    root.putChild(b"", resource)
    return ListeningService("metrics", description, endpoint, Site(root))

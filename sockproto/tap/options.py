"""Command-line options shared by every sockproto twistd plugin, and the service they build.

Every plugin takes ``--listen`` (repeatable), ``--handler``, ``--handler-timeout``,
``--threads``, ``--drain-timeout``, ``--metrics``, ``--workers`` and ``--reuse-port``;
the stream plugins add ``--max-connections`` (:class:`StreamServiceOptions`).  A limit
given as ``none`` (or ``off``) is lifted.  :func:`server_service` turns parsed options
and a factory into the :class:`~sockproto.serving.service.ServerService` twistd runs;
:func:`plugin_service` decides whether this process runs it, or is the parent of
``--workers`` processes that do (:mod:`sockproto.serving.workers`).

The options are parsed the same way in the parent and in each worker (a worker gets
the parent's arguments unchanged); only the reactor each ``--listen`` endpoint is
parsed with differs (:mod:`sockproto.serving.reuse`): the real one (this process
binds), an :class:`~sockproto.serving.reuse.AdoptingReactor` (a worker adopts the
parent's socket) or a :class:`~sockproto.serving.reuse.ReusePortReactor`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Final, TypeVar

from twisted.application.service import IService, MultiService
from twisted.internet import reactor
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.python import usage

from ..core.units import parse_duration, parse_size
from ..handlers import BUILTINS, Handler, resolve_handler
from ..serving import prometheus
from ..serving.proxy import (
    DEFAULT_PROXY_FROM,
    DEFAULT_PROXY_TIMEOUT,
    ProxyEndpoint,
    ProxySettings,
    split_proxy_endpoint,
)
from ..serving.reuse import REUSE_PORT_SUPPORTED, AdoptingReactor, ReusePortReactor, socket_family
from ..serving.service import DEFAULT_DRAIN_TIMEOUT, DrainableFactory, ServerService
from ..serving.streaming import is_streaming, streaming_form
from ..serving.threads import ThreadedHandler
from ..serving.worker import WorkerChild, WorkerContext, inherited
from ..serving.workers import Listener, WorkerParent

__all__ = [
    "DEFAULT_HANDLER_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "ServiceOptions",
    "StreamServiceOptions",
    "optional",
    "parse_count",
    "parse_duration",
    "parse_non_negative_count",
    "parse_non_negative_duration",
    "parse_rate",
    "parse_size",
    "plugin_service",
    "server_service",
    "worker_service",
]

T = TypeVar("T")

DEFAULT_HANDLER_TIMEOUT: Final = 30.0
"""``--handler-timeout``'s default, in seconds."""

DEFAULT_MAX_CONNECTIONS: Final = 1000
"""``--max-connections``'s default: under the usual 1024 open files per process."""

NO_LIMIT: Final = frozenset({"none", "off", "unlimited"})
"""The words that lift a limit."""


def parse_count(text: str) -> int:
    """Parse a positive whole number.

    :raises ValueError: with a message saying what is accepted.
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {text!r}")
    return value


def parse_non_negative_count(text: str) -> int:
    """Parse a whole number, 0 included.

    :raises ValueError: with a message saying what is accepted.
    """
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"expected a whole number (0 or more), got {text!r}")
    return value


def parse_non_negative_duration(text: str) -> float:
    """Parse a duration in seconds, ``0`` included: ``0``, ``10``, ``2.5``, ``500ms``.

    :raises ValueError: with a message saying what is accepted.
    """
    try:
        return parse_duration(text)
    except ValueError:
        number = text.strip().lower().removesuffix("ms").removesuffix("s")
    try:
        zero = float(number) == 0
    except ValueError:
        zero = False
    if not zero:
        raise ValueError(f"expected 0 or more seconds like 10, 2.5 or 500ms, got {text!r}")
    return 0.0


def parse_rate(text: str) -> float:
    """Parse a positive rate per second: ``100``, ``2.5``.

    :raises ValueError: with a message saying what is accepted.
    """
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise ValueError(f"expected a positive number per second, got {text!r}")
    return value


def no_limit_needs_streaming(options: Any, option: str) -> None:
    """Refuse ``--OPTION none`` unless the handler streams (and ``--threads`` is off).

    :raises usage.UsageError: naming the option: any other handler holds the whole request.
    """
    if options[option] is not None:
        return
    if not options["threads"] and is_streaming(streaming_form(options["handler"])):
        return
    raise usage.UsageError(
        f"--{option} none: only for a streaming handler (sha256, or one marked with "
        "sockproto.serving.streaming.streaming), without --threads: any other holds the whole request"
    )


def optional(parse: Callable[[str], T]) -> Callable[[str], T | None]:
    """Wrap ``parse`` so that ``none``, ``off`` or ``unlimited`` give ``None`` (no limit)."""

    def parse_optional(text: str) -> T | None:
        if text.strip().lower() in NO_LIMIT:
            return None
        try:
            return parse(text)
        except ValueError as e:
            raise ValueError(f"{e}, or none") from None

    return parse_optional


class ServiceOptions(usage.Options):
    """The options of every plugin, plus option checking that names the option.

    Subclasses set :attr:`default_listen`, add ``optParameters``, and call
    :meth:`convert` in ``postOptions`` for each option that needs parsing.
    """

    default_listen: ClassVar[str] = ""
    optParameters: ClassVar[list[list[Any]]] = [
        [
            "handler",
            None,
            "echo",
            f"the request handler: {' or '.join(sorted(BUILTINS))}, or module:callable",
        ],
        [
            "handler-timeout",
            None,
            f"{DEFAULT_HANDLER_TIMEOUT:g}",
            "seconds an asynchronous or threaded handler has to answer (ERROR 6, or a reset), or none",
        ],
        ["threads", None, "0", "run the handler in a pool of N threads (for blocking handlers); 0: no"],
        [
            "drain-timeout",
            None,
            f"{DEFAULT_DRAIN_TIMEOUT:g}",
            "at shutdown, seconds to finish the requests received before aborting the rest",
        ],
        [
            "drain-grace",
            None,
            "0",
            "at shutdown, first keep serving for this many seconds while failing health checks "
            "(PING gets ERROR 5), so that a load balancer stops sending before the listener closes",
        ],
        [
            "metrics",
            None,
            None,
            "serve Prometheus metrics over HTTP on ENDPOINT (needs prometheus_client); with "
            "--workers N, each worker on its own: {worker} (1 to N) in ENDPOINT, as tcp:910{worker}",
        ],
        [
            "workers",
            None,
            "1",
            "serve from N processes sharing the --listen sockets (the parent binds them, restarts "
            "workers that die, SIGHUP restarts them one at a time)",
        ],
    ]
    optFlags: ClassVar[list[list[str | None]]] = [
        [
            "reuse-port",
            None,
            "(Linux) bind each --listen with SO_REUSEPORT in each process (needed by UDP with --workers)",
        ],
    ]

    kind: ClassVar[str] = ""
    """The service's name (``frame``...): keys the sockets a worker inherits."""
    plugin: ClassVar[str] = ""
    """The twistd plugin name a worker runs (``sockproto-frame``...)."""
    datagram: ClassVar[bool] = False
    """Whether the endpoints are UDP (several workers need ``--reuse-port``)."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["listen"] = []
        self["worker"] = None
        self.argv: list[str] = []
        self.listen_reactor: Any = reactor

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse ``options``, remembered as :attr:`argv` (a worker gets them unchanged)."""
        self.argv = list(options) if options is not None else sys.argv[1:]
        super().parseOptions(options)  # type: ignore[no-untyped-call]

    def opt_listen(self, endpoint: str) -> None:
        """Listen on ENDPOINT, a Twisted server endpoint string (repeatable)."""
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [self.default_listen]
        try:
            context = inherited()
        except ValueError as e:
            raise usage.UsageError(str(e)) from e
        self.check_workers(context)
        self["endpoints"] = []
        for index, text in enumerate(self["listen"]):
            self.listen_reactor = self.reactor_for(index, text)
            self["endpoints"].append((text, self.server_endpoint(text)))
        self.listen_reactor = reactor
        self.convert("handler", resolve_handler)
        self.convert("handler-timeout", optional(parse_duration))
        self.convert("threads", parse_non_negative_count)
        if self["threads"] and is_streaming(self["handler"]):
            raise usage.UsageError(
                "--threads: the handler streams (it takes the request's body in chunks, in the "
                "reactor thread, and hands blocking work to a thread itself): run it without --threads"
            )
        self.convert("drain-timeout", parse_non_negative_duration)
        self.convert("drain-grace", parse_non_negative_duration)
        if self["metrics"] is not None:
            if not prometheus.available():
                raise usage.UsageError(prometheus.MISSING)
            if self["worker"] is not None:
                self["metrics"] = self["metrics"].replace("{worker}", str(self["worker"].index))
            self["metrics-endpoint"] = self.stream_endpoint(
                "metrics", self["metrics"].replace("{worker}", "1")
            )

    @property
    def spawns_workers(self) -> bool:
        """Whether this process is the parent of ``--workers`` processes (N > 1, not a worker)."""
        return self["workers"] > 1 and self["worker"] is None

    def check_workers(self, context: WorkerContext | None) -> None:
        """Parse ``--workers``, note the worker ``context`` if any, refuse what cannot work."""
        self["worker"] = context
        workers = self.convert("workers", parse_count)
        if self["reuse-port"] and not REUSE_PORT_SUPPORTED:
            raise usage.UsageError("--reuse-port: SO_REUSEPORT balancing needs Linux")
        if self.datagram and workers > 1 and not self["reuse-port"]:
            raise usage.UsageError(
                f"--workers {workers} on UDP needs --reuse-port: on one shared UDP socket a "
                "retransmission could reach another worker than the one whose reply cache holds "
                "the answer; with --reuse-port Linux sends one source's datagrams to one worker"
            )
        if workers > 1 and self["metrics"] is not None and "{worker}" not in self["metrics"]:
            raise usage.UsageError(
                f"--metrics with --workers {workers}: each worker serves its own metrics, so the "
                "endpoint needs {worker} (replaced by 1 to N), as tcp:910{worker}:interface=127.0.0.1"
            )
        if (
            context is not None
            and not self["reuse-port"]
            and len(context.fds(self.kind)) != len(self["listen"])
        ):
            raise usage.UsageError(
                f"worker {context.index}: inherited {len(context.fds(self.kind))} socket(s) for "
                f"{len(self['listen'])} --listen"
            )

    def reactor_for(self, index: int, text: str) -> Any:
        """The reactor the ``index``-th ``--listen`` is parsed with (see the module)."""
        if self["reuse-port"]:
            return ReusePortReactor(reactor, probe=self.spawns_workers)
        if self["worker"] is not None:
            return AdoptingReactor(reactor, self["worker"].fds(self.kind)[index])
        return reactor

    def server_endpoint(self, text: str) -> Any:
        """Parse one ``--listen`` value (nothing is bound yet)."""
        adopting = self.listen_reactor
        if isinstance(adopting, AdoptingReactor) and text.partition(":")[0].strip().lower() == "systemd":
            # The parent took the socket from systemd; here it is just an inherited one.
            return AdoptedStreamServerEndpoint(adopting, adopting.fd, socket_family(adopting.fd))
        return self.stream_endpoint("listen", text, adopting)

    def stream_endpoint(self, option: str, text: str, listen_reactor: Any = None) -> Any:
        """Parse a Twisted server endpoint string given to ``--option``."""
        try:
            return serverFromString(reactor if listen_reactor is None else listen_reactor, text)
        except Exception as e:  # Twisted raises ValueError, KeyError, TypeError...
            hint = " (escape the colons of an IPv6 address: \\:)" if "::" in text.replace("\\:", "") else ""
            raise usage.UsageError(f"--{option} {text!r}: {e or type(e).__name__}{hint}") from e

    def handler(self) -> tuple[Handler, ThreadedHandler | None]:
        """The handler to serve, and its thread pool with ``--threads N``."""
        if not self["threads"]:
            return self["handler"], None
        threaded = ThreadedHandler(self["handler"], self["threads"])
        return threaded, threaded

    def convert(self, name: str, parse: Callable[[str], T]) -> T:
        """Replace option ``name``'s text by ``parse(text)``; a ValueError names the option."""
        try:
            value = parse(self[name]) if isinstance(self[name], str) else self[name]
        except ValueError as e:
            raise usage.UsageError(f"--{name}: {e}") from e
        self[name] = value
        return value


class StreamServiceOptions(ServiceOptions):
    """The options of the stream plugins: :class:`ServiceOptions`, ``--max-connections``,
    and the PROXY protocol's ``--proxy-from`` and ``--proxy-timeout`` (for ``--listen proxy:...``)."""

    optParameters: ClassVar[list[list[Any]]] = [
        [
            "max-connections",
            None,
            str(DEFAULT_MAX_CONNECTIONS),
            "connections served at once; more are refused at once, or none",
        ],
        [
            "proxy-timeout",
            None,
            f"{DEFAULT_PROXY_TIMEOUT:g}",
            "on a proxy: listener, seconds a connection has to send its whole PROXY header",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["proxy-from"] = []

    def opt_proxy_from(self, network: str) -> None:
        """On a proxy: listener, accept a PROXY header only from NETWORK (repeatable; default loopback)."""
        self["proxy-from"].append(network)

    def postOptions(self) -> None:
        self.convert("proxy-timeout", parse_duration)  # before the endpoints: proxy: ones need it
        try:
            self["proxy"] = ProxySettings(self["proxy-from"] or DEFAULT_PROXY_FROM, self["proxy-timeout"])
        except ValueError as e:
            raise usage.UsageError(f"--proxy-from: {e}") from e
        super().postOptions()
        self.convert("max-connections", optional(parse_count))

    def server_endpoint(self, text: str) -> Any:
        """Parse one ``--listen`` value; ``proxy:ENDPOINT`` is ENDPOINT expecting a PROXY header."""
        try:
            proxied, inner = split_proxy_endpoint(text)
        except ValueError as e:
            raise usage.UsageError(f"--listen {e}") from e
        if not proxied:
            return super().server_endpoint(text)
        return ProxyEndpoint(self.server_endpoint(inner), self["proxy"])  # as a service checks it


def server_service(
    kind: str, factory: DrainableFactory, options: ServiceOptions, threads: ThreadedHandler | None
) -> ServerService:
    """The service a plugin runs: ``factory`` on every ``--listen``, drained on stop, with metrics."""
    service = ServerService(
        kind,
        factory,
        options["endpoints"],
        drain_timeout=options["drain-timeout"],
        drain_grace=options["drain-grace"],
        threads=threads,
    )
    if options["metrics"] is not None:
        prometheus.metrics_service(
            options["metrics"], options["metrics-endpoint"], [factory.metrics]
        ).setServiceParent(service)  # type: ignore[no-untyped-call]
    return service


def plugin_service(options: ServiceOptions, build: Callable[[], IService]) -> IService:
    """What one plugin's process runs: the workers' parent, or ``build()`` (and, in a worker, its tie)."""
    if options.spawns_workers:
        listeners: list[Listener] = [
            (options.kind, text, endpoint) for text, endpoint in options["endpoints"]
        ]
        return WorkerParent(
            options.plugin,
            options.argv,
            listeners,
            workers=options["workers"],
            reuse_port=options["reuse-port"],
            drain_timeout=options["drain-timeout"] + options["drain-grace"],  # the workers' whole stop
        )
    return worker_service(options["worker"], build())


def worker_service(context: WorkerContext | None, service: IService) -> IService:
    """``service``, and in a worker the :class:`~sockproto.serving.worker.WorkerChild` started after it."""
    if context is None:
        return service
    parent = MultiService()
    service.setServiceParent(parent)
    WorkerChild(context).setServiceParent(parent)  # type: ignore[no-untyped-call]
    return parent

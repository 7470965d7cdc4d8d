"""Command-line options shared by every sockproto twistd plugin, and the service they build.

Every plugin takes ``--listen`` (repeatable), ``--handler``, ``--handler-timeout``,
``--threads``, ``--drain-timeout`` and ``--metrics``; the stream plugins add
``--max-connections`` (:class:`StreamServiceOptions`).  A limit given as ``none`` (or
``off``) is lifted.  :func:`server_service` turns parsed options and a factory into the
:class:`~sockproto.serving.service.ServerService` twistd runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Final, TypeVar

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from ..core.units import parse_duration, parse_size
from ..handlers import BUILTINS, Handler, resolve_handler
from ..serving import prometheus
from ..serving.service import DEFAULT_DRAIN_TIMEOUT, DrainableFactory, ServerService
from ..serving.threads import ThreadedHandler

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
    "server_service",
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
        ["metrics", None, None, "serve Prometheus metrics over HTTP on ENDPOINT (needs prometheus_client)"],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Listen on ENDPOINT, a Twisted server endpoint string (repeatable)."""
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [self.default_listen]
        self["endpoints"] = [(text, self.server_endpoint(text)) for text in self["listen"]]
        self.convert("handler", resolve_handler)
        self.convert("handler-timeout", optional(parse_duration))
        self.convert("threads", parse_non_negative_count)
        self.convert("drain-timeout", parse_non_negative_duration)
        if self["metrics"] is not None:
            if not prometheus.available():
                raise usage.UsageError(prometheus.MISSING)
            self["metrics-endpoint"] = self.stream_endpoint("metrics", self["metrics"])

    def server_endpoint(self, text: str) -> Any:
        """Parse one ``--listen`` value (nothing is bound yet)."""
        return self.stream_endpoint("listen", text)

    def stream_endpoint(self, option: str, text: str) -> Any:
        """Parse a Twisted server endpoint string given to ``--option``."""
        try:
            return serverFromString(reactor, text)
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
    """The options of the stream plugins: :class:`ServiceOptions` and ``--max-connections``."""

    optParameters: ClassVar[list[list[Any]]] = [
        [
            "max-connections",
            None,
            str(DEFAULT_MAX_CONNECTIONS),
            "connections served at once; more are refused at once, or none",
        ],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        self.convert("max-connections", optional(parse_count))


def server_service(
    kind: str, factory: DrainableFactory, options: ServiceOptions, threads: ThreadedHandler | None
) -> ServerService:
    """The service a plugin runs: ``factory`` on every ``--listen``, drained on stop, with metrics."""
    service = ServerService(
        kind, factory, options["endpoints"], drain_timeout=options["drain-timeout"], threads=threads
    )
    if options["metrics"] is not None:
        prometheus.metrics_service(
            options["metrics"], options["metrics-endpoint"], [factory.metrics]
        ).setServiceParent(service)  # type: ignore[no-untyped-call]
    return service

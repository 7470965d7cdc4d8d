"""``twistd sockproto-frame``: the framed-header service."""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application.service import IService

from ..core.decoder import DEFAULT_MAX_PAYLOAD
from ..core.header import PRESETS
from ..core.units import parse_size_or_none
from ..frame.server import DEFAULT_MAX_IN_FLIGHT, FrameServerFactory
from ..serving.streaming import streaming_form
from .options import (
    StreamServiceOptions,
    no_limit_needs_streaming,
    optional,
    parse_count,
    parse_duration,
    plugin_service,
    server_service,
)

__all__ = ["DEFAULT_IDLE_TIMEOUT", "DEFAULT_LISTEN", "Options", "build", "makeService"]

DEFAULT_LISTEN = "tcp:8750:interface=127.0.0.1"

DEFAULT_IDLE_TIMEOUT = 300.0
"""``--idle-timeout``'s default, in seconds."""


def _parse_header(name: str) -> Any:
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"expected one of {', '.join(PRESETS)}, got {name!r}") from None


class Options(StreamServiceOptions):
    """Options of ``twistd sockproto-frame``."""

    synopsis = "[--listen ENDPOINT]... [--handler NAME] [--header spf1|int32|int16|int32le]"
    longdesc = (
        "Serve requests framed by a fixed binary header whose length field announces the "
        "payload (SPF/1 by default) on any stream endpoint: tcp:, tcp6:, unix:, ssl:, systemd:. "
        f"Listens on {DEFAULT_LISTEN} unless --listen is given."
    )
    default_listen = DEFAULT_LISTEN
    kind = "frame"
    plugin = "sockproto-frame"
    optParameters: ClassVar[list[list[Any]]] = [
        ["header", None, "spf1", f"the wire header: {', '.join(PRESETS)}"],
        [
            "max-payload",
            None,
            "16MiB",
            "the largest request accepted (65536, 64KiB, 16MiB...); none: what the header can say, "
            "for a streaming handler; over 16MiB or none, sha256 takes request frames in pieces",
        ],
        ["max-in-flight", None, str(DEFAULT_MAX_IN_FLIGHT), "unanswered requests per connection"],
        [
            "idle-timeout",
            None,
            f"{DEFAULT_IDLE_TIMEOUT:g}",
            "seconds a connection may stay without a whole frame (a PING counts) and nothing owed, or none",
        ],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        self.convert("header", _parse_header)
        self.convert("max-payload", parse_size_or_none)
        no_limit_needs_streaming(self, "max-payload")
        self.convert("max-in-flight", parse_count)
        self.convert("idle-timeout", optional(parse_duration))


def makeService(options: Options) -> IService:
    """Build the service ``twistd sockproto-frame`` runs (or the parent of its ``--workers``)."""
    return plugin_service(options, lambda: build(options))


def build(options: Options) -> IService:
    """Build the frame service serving in this process."""
    handler, threads = options.handler()
    max_payload = options["max-payload"]
    if threads is None and (max_payload is None or max_payload > DEFAULT_MAX_PAYLOAD):
        # large requests: sha256 takes request frames in pieces, in bounded memory (small
        # ones stay whole: a streamed request costs a coroutine and a body per request)
        handler = streaming_form(handler)
    factory = FrameServerFactory(
        handler,
        header=options["header"],
        max_payload=max_payload,
        max_in_flight=options["max-in-flight"],
        max_connections=options["max-connections"],
        idle_timeout=options["idle-timeout"],
        handler_timeout=options["handler-timeout"],
    )
    return server_service("frame", factory, options, threads)

"""``twistd sockproto-frame``: the framed-header service."""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application.service import IService

from ..core.header import PRESETS
from ..frame.server import DEFAULT_MAX_IN_FLIGHT, FrameServerFactory
from ..service import listening_services
from .options import ServiceOptions, parse_count, parse_size

__all__ = ["DEFAULT_LISTEN", "Options", "makeService"]

DEFAULT_LISTEN = "tcp:8750:interface=127.0.0.1"


def _parse_header(name: str) -> Any:
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"expected one of {', '.join(PRESETS)}, got {name!r}") from None


class Options(ServiceOptions):
    """Options of ``twistd sockproto-frame``."""

    synopsis = "[--listen ENDPOINT]... [--handler NAME] [--header spf1|int32|int16|int32le]"
    longdesc = (
        "Serve requests framed by a fixed binary header whose length field announces the "
        "payload (SPF/1 by default) on any stream endpoint: tcp:, tcp6:, unix:, ssl:, systemd:. "
        f"Listens on {DEFAULT_LISTEN} unless --listen is given."
    )
    default_listen = DEFAULT_LISTEN
    optParameters: ClassVar[list[list[Any]]] = [
        ["header", None, "spf1", f"the wire header: {', '.join(PRESETS)}"],
        ["max-payload", None, "16MiB", "the largest request accepted (65536, 64KiB, 16MiB...)"],
        ["max-in-flight", None, str(DEFAULT_MAX_IN_FLIGHT), "unanswered requests per connection"],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        self.convert("header", _parse_header)
        self.convert("max-payload", parse_size)
        self.convert("max-in-flight", parse_count)


def makeService(options: Options) -> IService:
    """Build the service ``twistd sockproto-frame`` runs."""
    factory = FrameServerFactory(
        options["handler"],
        header=options["header"],
        max_payload=options["max-payload"],
        max_in_flight=options["max-in-flight"],
    )
    return listening_services("frame", options["endpoints"], factory)

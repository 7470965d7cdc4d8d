"""``twistd sockproto-datagram``: the UDP datagram service."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from twisted.application.service import IService
from twisted.python import usage

from ..core.datagram import MAX_UDP_PAYLOAD, MIN_DATAGRAM, MODES, Mode
from ..core.datagram_guard import DEFAULT_AMPLIFICATION, DEFAULT_TRUSTED, SourceVerifier, parse_network
from ..datagram.endpoints import UDPServerEndpoint, udp_server_from_string
from ..datagram.server import DatagramServerFactory
from .options import (
    ServiceOptions,
    optional,
    parse_count,
    parse_rate,
    parse_size,
    plugin_service,
    server_service,
)

__all__ = ["DEFAULT_LISTEN", "DEFAULT_RATE_LIMIT", "Options", "build", "makeService"]

DEFAULT_LISTEN = "udp:8751:interface=127.0.0.1"

DEFAULT_RATE_LIMIT = 1000.0
"""``--rate-limit``'s default: requests per second per source host."""


def parse_mode(text: str) -> Mode:
    """Parse ``--header``: ``spf1`` or ``raw``.

    :raises ValueError: naming the modes accepted.
    """
    for mode in MODES:
        if text.lower() == mode:
            return mode
    raise ValueError(f"expected one of {', '.join(MODES)}, got {text!r}")


def parse_max_datagram(text: str) -> int:
    """Parse ``--max-datagram``: a size from 64 bytes to 65507 (the UDP payload limit).

    :raises ValueError: saying what is accepted.
    """
    size = parse_size(text)
    if not MIN_DATAGRAM <= size <= MAX_UDP_PAYLOAD:
        raise ValueError(
            f"expected a size from {MIN_DATAGRAM} to {MAX_UDP_PAYLOAD} bytes (the UDP payload limit), "
            f"got {text!r}"
        )
    return size


class Options(ServiceOptions):
    """Options of ``twistd sockproto-datagram``."""

    synopsis = "[--listen udp:PORT[:interface=ADDR]]... [--handler NAME] [--header spf1|raw]"
    longdesc = (
        "Serve requests over UDP, one datagram each: SPF/1 datagrams (id-matched, retransmission-safe) "
        "or raw payloads. Datagrams are read whole (65536-byte reads). Endpoints: udp:PORT or "
        "udp:PORT:interface=ADDR, IPv6 colons escaped (udp:8751:interface=\\:\\: is dual-stack). "
        f"Listens on {DEFAULT_LISTEN} unless --listen is given."
    )
    default_listen = DEFAULT_LISTEN
    kind = "datagram"
    plugin = "sockproto-datagram"
    datagram = True
    optParameters: ClassVar[list[list[Any]]] = [
        ["header", None, "spf1", f"the datagram format: {' or '.join(MODES)}"],
        [
            "max-datagram",
            None,
            str(MAX_UDP_PAYLOAD),
            f"the largest reply datagram, {MIN_DATAGRAM} to {MAX_UDP_PAYLOAD} bytes",
        ],
        [
            "rate-limit",
            None,
            f"{DEFAULT_RATE_LIMIT:g}",
            "requests per second per source host (bursts of as many); more are dropped; or none. "
            "Sources in --trusted networks (loopback by default) are exempt",
        ],
        [
            "amplification",
            None,
            str(DEFAULT_AMPLIFICATION),
            "an unverified source gets no answer over N times its request (ERROR 2, raw: dropped), or none",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["trusted"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Listen on ENDPOINT: udp:PORT[:interface=ADDR] (repeatable)."""
        super().opt_listen(endpoint)

    def opt_trusted(self, network: str) -> None:
        """Sources in NETWORK (10.0.0.0/8, fd00::/8...) are trusted: no amplification limit and
        no rate limit (repeatable; loopback unless given)."""
        try:
            self["trusted"].append(str(parse_network(network)))
        except ValueError as e:
            raise usage.UsageError(f"--trusted: {e}") from e

    def postOptions(self) -> None:
        super().postOptions()
        self.convert("header", parse_mode)
        self.convert("max-datagram", parse_max_datagram)
        self.convert("rate-limit", optional(parse_rate))
        self.convert("amplification", optional(parse_count))
        if not self["trusted"]:
            self["trusted"] = list(DEFAULT_TRUSTED)

    def server_endpoint(self, text: str) -> UDPServerEndpoint:
        """Parse one ``--listen`` value as a UDP endpoint string."""
        try:
            return udp_server_from_string(self.listen_reactor, text)
        except ValueError as e:
            raise usage.UsageError(f"--listen {e}") from e


def makeService(options: Options) -> IService:
    """Build the service ``twistd sockproto-datagram`` runs (or the parent of its ``--workers``)."""
    return plugin_service(options, lambda: build(options))


def build(options: Options) -> IService:
    """Build the datagram service serving in this process."""
    handler, threads = options.handler()
    factory = DatagramServerFactory(
        handler,
        mode=options["header"],
        max_datagram=options["max-datagram"],
        handler_timeout=options["handler-timeout"],
        rate_limit=options["rate-limit"],
        amplification=options["amplification"],
        trusted=options["trusted"],
    )
    worker = options["worker"]
    settings = factory.settings
    if worker is not None and worker.secret is not None and settings.verifier is not None:
        # --workers: every worker keys its cookies with the parent's secret, so a cookie one
        # worker gave is accepted by the others.
        verifier = SourceVerifier(settings.trusted, clock=settings.clock, secret=worker.secret)
        factory.settings = replace(settings, verifier=verifier)
    return server_service("datagram", factory, options, threads)

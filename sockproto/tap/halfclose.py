"""``twistd sockproto-halfclose``: the half-close request/response service."""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application.service import IService
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.python import usage

from ..core.units import parse_size_or_none
from ..halfclose.server import DEFAULT_MAX_REQUEST, DEFAULT_REQUEST_TIMEOUT, HalfCloseServerFactory
from ..serving.streaming import streaming_form
from .options import (
    StreamServiceOptions,
    no_limit_needs_streaming,
    parse_duration,
    plugin_service,
    server_service,
)

__all__ = ["DEFAULT_LISTEN", "PROXY_TYPES", "TLS_TYPES", "Options", "build", "makeService"]

DEFAULT_LISTEN = "tcp:8752:interface=127.0.0.1"

TLS_TYPES = frozenset({"ssl", "tls", "mtls"})
"""Endpoint types refused: Twisted's TLS layer has no half-close (twisted#5341)."""

PROXY_TYPES = frozenset({"haproxy"})
"""Endpoint types refused: Twisted's HAProxy wrapper hides the half-close."""


class Options(StreamServiceOptions):
    """Options of ``twistd sockproto-halfclose``."""

    synopsis = "[--listen ENDPOINT]... [--handler NAME] [--max-request BYTES] [--request-timeout SECONDS]"
    longdesc = (
        "Serve one request per connection: the client sends its request and shuts down its "
        "write side (half-close); the answer is written and the connection closed. A request "
        "too large, too slow, or whose handler fails is answered with a connection reset. "
        "Endpoints: tcp:, tcp6:, unix: (ssl:/tls:/mtls: are refused: Twisted's TLS has no "
        "half-close; haproxy: too: its wrapper ends the connection on the half-close: use "
        "proxy:tcp:PORT, sockproto's own PROXY protocol listener, behind HAProxy). "
        f"Listens on {DEFAULT_LISTEN} unless --listen is given."
    )
    default_listen = DEFAULT_LISTEN
    kind = "halfclose"
    plugin = "sockproto-halfclose"
    optParameters: ClassVar[list[list[Any]]] = [
        [
            "max-request",
            None,
            f"{DEFAULT_MAX_REQUEST // 1024 // 1024}MiB",
            "the largest request accepted; more resets the connection (65536, 64KiB, 1MiB...); "
            "none: no limit, for a streaming handler (sha256 streams)",
        ],
        [
            "request-timeout",
            None,
            f"{DEFAULT_REQUEST_TIMEOUT:g}",
            "seconds from connecting until the whole request (its half-close) must have arrived",
        ],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        self.convert("max-request", parse_size_or_none)
        no_limit_needs_streaming(self, "max-request")
        self.convert("request-timeout", parse_duration)

    def server_endpoint(self, text: str) -> Any:
        """Parse one ``--listen`` value, refusing TLS and HAProxy endpoints, which cannot half-close."""
        kind = text.partition(":")[0].strip().lower()
        if kind in PROXY_TYPES:
            raise usage.UsageError(
                f"--listen {text!r}: haproxy: endpoints cannot serve half-close requests: Twisted's "
                "HAProxyProtocolWrapper is a ProtocolWrapper, which does not pass the client's "
                "half-close on (it is no IHalfCloseableProtocol), so the half-close ends the whole "
                "connection and no request could ever be answered. Use tcp:, tcp6: or unix:, and "
                "behind HAProxy (send-proxy or send-proxy-v2) sockproto's own PROXY prefix, which "
                f"keeps the half-close: --listen proxy:{text.partition(':')[2]} (with --proxy-from "
                "the balancer's address)."
            )
        endpoint = None if kind in TLS_TYPES else super().server_endpoint(text)
        if endpoint is None or isinstance(endpoint, SSL4ServerEndpoint):
            raise usage.UsageError(
                f"--listen {text!r}: TLS endpoints cannot serve half-close requests: Twisted's "
                "TLS layer has no half-close (twisted#5341), the client's half-close ends the whole "
                "connection, so no request could ever be answered. Use tcp:, tcp6: or unix: "
                "(behind a TLS-terminating proxy if you need encryption)."
            )
        return endpoint


def makeService(options: Options) -> IService:
    """Build the service ``twistd sockproto-halfclose`` runs (or the parent of its ``--workers``)."""
    return plugin_service(options, lambda: build(options))


def build(options: Options) -> IService:
    """Build the half-close service serving in this process."""
    handler, threads = options.handler()
    if threads is None:
        handler = streaming_form(handler)  # sha256 takes the body in chunks: bounded memory
    factory = HalfCloseServerFactory(
        handler,
        max_request=options["max-request"],
        request_timeout=options["request-timeout"],
        max_connections=options["max-connections"],
        handler_timeout=options["handler-timeout"],
    )
    return server_service("halfclose", factory, options, threads)

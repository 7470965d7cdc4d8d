"""sockproto: Twisted protocols, factories and twistd plugins for three socket patterns.

- **frame**: a fixed binary header whose length field announces the payload (SPF/1 by
  default), over any stream endpoint;
- **datagram**: UDP request/response, whole datagrams, retransmission-safe;
- **halfclose**: one request per connection, ended by the client's half-close.

Names are imported lazily, so ``import sockproto.core`` (the sans-IO codec) never
imports Twisted.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # sans-IO core
    "HeaderSpec": "sockproto.core.header",
    "SPF1": "sockproto.core.header",
    "INT32": "sockproto.core.header",
    "INT16": "sockproto.core.header",
    "INT32LE": "sockproto.core.header",
    "PRESETS": "sockproto.core.header",
    "PayloadTooLarge": "sockproto.core.header",
    "PayloadTooShort": "sockproto.core.header",
    "FrameDecoder": "sockproto.core.decoder",
    "Frame": "sockproto.core.decoder",
    "Kind": "sockproto.core.spf1",
    "ErrorCode": "sockproto.core.spf1",
    # the handler contract
    "Request": "sockproto.request",
    "Handler": "sockproto.handlers",
    # frame service
    "FrameServerFactory": "sockproto.frame.server",
    "FrameServerProtocol": "sockproto.frame.server",
    "FrameClientFactory": "sockproto.frame.client",
    "FrameClientProtocol": "sockproto.frame.client",
    "RemoteError": "sockproto.frame.client",
    "RequestTimeout": "sockproto.frame.client",
    "connect_frame": "sockproto.frame.client",
    "FramePool": "sockproto.frame.pool",
    "PoolError": "sockproto.frame.pool",
    "NoEndpointAvailable": "sockproto.frame.pool",
    "RequestLost": "sockproto.frame.pool",
    "PoolClosed": "sockproto.frame.pool",
    # datagram service
    "DatagramServerFactory": "sockproto.datagram.server",
    "DatagramServerProtocol": "sockproto.datagram.server",
    "DatagramClientProtocol": "sockproto.datagram.client",
    "PortUnreachable": "sockproto.datagram.client",
    "connect_datagram": "sockproto.datagram.client",
    "UDPServerEndpoint": "sockproto.datagram.endpoints",
    "UDPClientEndpoint": "sockproto.datagram.endpoints",
    "udp_server_from_string": "sockproto.datagram.endpoints",
    "udp_client_from_string": "sockproto.datagram.endpoints",
    "DropReason": "sockproto.core.datagram",
    "MAX_UDP_PAYLOAD": "sockproto.core.datagram",
    # half-close service
    "HalfCloseServerFactory": "sockproto.halfclose.server",
    "HalfCloseServerProtocol": "sockproto.halfclose.server",
    "HalfCloseClientProtocol": "sockproto.halfclose.client",
    "HalfCloseError": "sockproto.halfclose.client",
    "ServerReset": "sockproto.halfclose.client",
    "AnswerTimeout": "sockproto.halfclose.client",
    "halfclose_request": "sockproto.halfclose.client",
    # running services: graceful stop, threads, counters
    "ServerService": "sockproto.serving.service",
    "ThreadedHandler": "sockproto.serving.threads",
    "ServiceMetrics": "sockproto.serving.metrics",
    "HandlerTimeout": "sockproto.serving.answering",
}

# ``_EXPORTS`` is the list of public names and their modules.  ``__all__`` and the imports
# under TYPE_CHECKING repeat it for static tools (ruff and mypy read them, not the dict);
# tests/unit/test_public_names.py fails unless all three name the same set.
__all__ = [
    "AnswerTimeout",
    "DatagramClientProtocol",
    "DatagramServerFactory",
    "DatagramServerProtocol",
    "DropReason",
    "ErrorCode",
    "Frame",
    "FrameClientFactory",
    "FrameClientProtocol",
    "FrameDecoder",
    "FramePool",
    "FrameServerFactory",
    "FrameServerProtocol",
    "HalfCloseClientProtocol",
    "HalfCloseError",
    "HalfCloseServerFactory",
    "HalfCloseServerProtocol",
    "Handler",
    "HandlerTimeout",
    "HeaderSpec",
    "INT16",
    "INT32",
    "INT32LE",
    "Kind",
    "MAX_UDP_PAYLOAD",
    "NoEndpointAvailable",
    "PRESETS",
    "PayloadTooLarge",
    "PayloadTooShort",
    "PoolClosed",
    "PoolError",
    "PortUnreachable",
    "RemoteError",
    "Request",
    "RequestLost",
    "RequestTimeout",
    "SPF1",
    "ServerReset",
    "ServerService",
    "ServiceMetrics",
    "ThreadedHandler",
    "UDPClientEndpoint",
    "UDPServerEndpoint",
    "connect_datagram",
    "connect_frame",
    "halfclose_request",
    "udp_client_from_string",
    "udp_server_from_string",
]

if TYPE_CHECKING:
    from .core.datagram import MAX_UDP_PAYLOAD, DropReason
    from .core.decoder import Frame, FrameDecoder
    from .core.header import (
        INT16,
        INT32,
        INT32LE,
        PRESETS,
        SPF1,
        HeaderSpec,
        PayloadTooLarge,
        PayloadTooShort,
    )
    from .core.spf1 import ErrorCode, Kind
    from .datagram.client import DatagramClientProtocol, PortUnreachable, connect_datagram
    from .datagram.endpoints import (
        UDPClientEndpoint,
        UDPServerEndpoint,
        udp_client_from_string,
        udp_server_from_string,
    )
    from .datagram.server import DatagramServerFactory, DatagramServerProtocol
    from .frame.client import (
        FrameClientFactory,
        FrameClientProtocol,
        RemoteError,
        RequestTimeout,
        connect_frame,
    )
    from .frame.pool import FramePool, NoEndpointAvailable, PoolClosed, PoolError, RequestLost
    from .frame.server import FrameServerFactory, FrameServerProtocol
    from .halfclose.client import (
        AnswerTimeout,
        HalfCloseClientProtocol,
        HalfCloseError,
        ServerReset,
        halfclose_request,
    )
    from .halfclose.server import HalfCloseServerFactory, HalfCloseServerProtocol
    from .handlers import Handler
    from .request import Request
    from .serving.answering import HandlerTimeout
    from .serving.metrics import ServiceMetrics
    from .serving.service import ServerService
    from .serving.threads import ThreadedHandler


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sockproto' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

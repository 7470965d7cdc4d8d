"""The UDP datagram service: server, retransmitting client, UDP endpoints and their strings.

Names are imported lazily, so that ``import sockproto.datagram.client`` loads neither
the server nor its cache and guard.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "MAX_UDP_PAYLOAD": "sockproto.core.datagram",
    "DropReason": "sockproto.core.datagram",
    "MODES": "sockproto.core.datagram",
    "Mode": "sockproto.core.datagram",
    "ReplyCache": "sockproto.core.datagram_cache",
    "DEFAULT_INTERVAL": "sockproto.datagram.client",
    "DEFAULT_RETRIES": "sockproto.datagram.client",
    "DEFAULT_TIMEOUT": "sockproto.datagram.client",
    "DatagramClientProtocol": "sockproto.datagram.client",
    "PortUnreachable": "sockproto.datagram.client",
    "RemoteError": "sockproto.datagram.client",
    "RequestTimeout": "sockproto.datagram.client",
    "connect_datagram": "sockproto.datagram.client",
    "DatagramProtocolFactory": "sockproto.datagram.endpoints",
    "UDPClientEndpoint": "sockproto.datagram.endpoints",
    "UDPServerEndpoint": "sockproto.datagram.endpoints",
    "udp_client_from_string": "sockproto.datagram.endpoints",
    "udp_server_from_string": "sockproto.datagram.endpoints",
    "DEFAULT_MAX_PENDING": "sockproto.datagram.settings",
    "DatagramSettings": "sockproto.datagram.settings",
    "DatagramServerFactory": "sockproto.datagram.server",
    "DatagramServerProtocol": "sockproto.datagram.protocol",
    "DatagramStats": "sockproto.datagram.stats",
}

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "DatagramClientProtocol",
    "DatagramProtocolFactory",
    "DatagramServerFactory",
    "DatagramServerProtocol",
    "DatagramSettings",
    "DatagramStats",
    "DropReason",
    "MAX_UDP_PAYLOAD",
    "MODES",
    "Mode",
    "PortUnreachable",
    "RemoteError",
    "ReplyCache",
    "RequestTimeout",
    "UDPClientEndpoint",
    "UDPServerEndpoint",
    "connect_datagram",
    "udp_client_from_string",
    "udp_server_from_string",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from ..core.datagram import MAX_UDP_PAYLOAD, MODES, DropReason, Mode
    from ..core.datagram_cache import ReplyCache
    from .client import (
        DEFAULT_INTERVAL,
        DEFAULT_RETRIES,
        DEFAULT_TIMEOUT,
        DatagramClientProtocol,
        PortUnreachable,
        RemoteError,
        RequestTimeout,
        connect_datagram,
    )
    from .endpoints import (
        DatagramProtocolFactory,
        UDPClientEndpoint,
        UDPServerEndpoint,
        udp_client_from_string,
        udp_server_from_string,
    )
    from .protocol import DatagramServerProtocol
    from .server import DatagramServerFactory
    from .settings import DEFAULT_MAX_PENDING, DatagramSettings
    from .stats import DatagramStats

"""The UDP datagram service: server, retransmitting client, UDP endpoints and their strings."""

from ..core.datagram import MAX_UDP_PAYLOAD, DropReason
from .cache import ReplyCache
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
from .server import DEFAULT_MAX_PENDING, MODES, DatagramServerFactory, DatagramServerProtocol, Mode
from .stats import DatagramStats

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "MAX_UDP_PAYLOAD",
    "MODES",
    "DatagramClientProtocol",
    "DatagramProtocolFactory",
    "DatagramServerFactory",
    "DatagramServerProtocol",
    "DatagramStats",
    "DropReason",
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

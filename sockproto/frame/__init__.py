"""The framed-header service: server and client over any stream endpoint."""

from .client import (
    AnswerTooLarge,
    FrameClientFactory,
    FrameClientProtocol,
    FrameProtocolError,
    RemoteError,
    RequestTimeout,
    connect_frame,
)
from .server import DEFAULT_MAX_IN_FLIGHT, FrameServerFactory, FrameServerProtocol

__all__ = [
    "DEFAULT_MAX_IN_FLIGHT",
    "AnswerTooLarge",
    "FrameClientFactory",
    "FrameClientProtocol",
    "FrameProtocolError",
    "FrameServerFactory",
    "FrameServerProtocol",
    "RemoteError",
    "RequestTimeout",
    "connect_frame",
]

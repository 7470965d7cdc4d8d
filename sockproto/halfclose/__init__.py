"""The half-close service: one request per connection, ended by the client's half-close."""

from .client import (
    DEFAULT_MAX_ANSWER,
    DEFAULT_TIMEOUT,
    AnswerTimeout,
    AnswerTooLarge,
    HalfCloseClientProtocol,
    HalfCloseError,
    HalfCloseUnsupported,
    ServerReset,
    halfclose_request,
)
from .server import (
    DEFAULT_MAX_REQUEST,
    DEFAULT_REQUEST_TIMEOUT,
    HalfCloseServerFactory,
    HalfCloseServerProtocol,
)

__all__ = [
    "DEFAULT_MAX_ANSWER",
    "DEFAULT_MAX_REQUEST",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "AnswerTimeout",
    "AnswerTooLarge",
    "HalfCloseClientProtocol",
    "HalfCloseError",
    "HalfCloseServerFactory",
    "HalfCloseServerProtocol",
    "HalfCloseUnsupported",
    "ServerReset",
    "halfclose_request",
]

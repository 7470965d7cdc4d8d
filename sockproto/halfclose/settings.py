"""The settings every connection of one half-close service shares: one frozen object."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..serving.answering import PendingWork
from ..serving.proxy import ProxySettings
from ..serving.settings import StreamSettings, check_timeout
from ..serving.streaming import is_streaming

__all__ = [
    "DEFAULT_HANDLER_TIMEOUT",
    "DEFAULT_MAX_REQUEST",
    "DEFAULT_REQUEST_TIMEOUT",
    "HalfCloseSettings",
]

DEFAULT_MAX_REQUEST = 1024 * 1024
"""The largest request accepted by default, in bytes (1 MiB)."""

DEFAULT_REQUEST_TIMEOUT = 30.0
"""Seconds a client has, from connecting, to send its whole request and half-close."""

DEFAULT_HANDLER_TIMEOUT = 30.0
"""Seconds an asynchronous handler has to answer by default (the twistd plugin's default too)."""


@dataclass(frozen=True, slots=True, eq=False)
class HalfCloseSettings(StreamSettings):
    """A half-close service's settings, validated once.

    :ivar max_request: the largest request accepted, in bytes (``>= 0``); ``None``: no
        limit, for a streaming handler only (:func:`~sockproto.serving.streaming.streaming`).
    :ivar request_timeout: seconds from connecting until the client's half-close;
        ``None``: no limit.
    :ivar pending: the service's handler calls still running (shared by its connections).
    :ivar proxy: every connection starts with a PROXY header (see
        :class:`~sockproto.serving.proxy.ProxySettings`); ``None``: none does.
    """

    max_request: int | None = DEFAULT_MAX_REQUEST
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT
    pending: PendingWork = field(default_factory=PendingWork, repr=False)
    proxy: ProxySettings | None = None

    def __post_init__(self) -> None:
        if self.max_request is None:
            if not is_streaming(self.handler):
                raise ValueError("max_request None (no limit) needs a streaming handler")
        elif self.max_request < 0:
            raise ValueError(f"max_request must be >= 0, not {self.max_request}")
        check_timeout("request_timeout", self.request_timeout)
        super(HalfCloseSettings, self).__post_init__()

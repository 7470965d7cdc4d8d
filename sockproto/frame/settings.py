"""The frame service's settings: one frozen object per factory, validated here only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ..core.decoder import DEFAULT_MAX_PAYLOAD
from ..core.header import SPF1, HeaderSpec
from ..serving.proxy import ProxySettings
from ..serving.settings import ServiceSettings, StreamSettings, check_timeout
from ..serving.streaming import is_streaming

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "FrameSettings"]

DEFAULT_MAX_IN_FLIGHT: Final = 64
"""Unanswered requests allowed per connection before it stops being read."""


@dataclass(frozen=True, slots=True, eq=False)
class FrameSettings(StreamSettings):
    """What the connections of one frame service share.

    :ivar header: the wire header.
    :ivar max_payload: the largest request accepted; clamped here, and only here, to
        what the header's length field can express.  Given as ``None`` (a streaming
        handler only): that limit.
    :ivar max_in_flight: unanswered requests allowed per connection before reading pauses.
    :ivar idle_timeout: seconds without a whole frame and without an answer owed
        before a connection is closed; ``None``: never.
    :ivar proxy: every connection starts with a PROXY header (see
        :class:`~sockproto.serving.proxy.ProxySettings`); ``None``: none does.
    :raises ValueError: for a negative ``max_payload`` (or ``None`` with a handler that
        does not stream), a ``max_in_flight`` under 1 or a timeout that is neither
        ``None`` nor positive.
    """

    header: HeaderSpec = SPF1
    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    idle_timeout: float | None = None
    proxy: ProxySettings | None = None

    def __post_init__(self) -> None:
        if self.max_payload is None:  # accepted as an input
            if not is_streaming(self.handler):
                raise ValueError(
                    "max_payload=None (no limit but the header's) is for a streaming handler only: "
                    "any other holds the whole request"
                )
            object.__setattr__(self, "max_payload", self.header.max_payload)
        if self.max_payload < 0:
            raise ValueError(f"max_payload must be >= 0, not {self.max_payload}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {self.max_in_flight}")
        check_timeout("idle_timeout", self.idle_timeout)
        ServiceSettings.__post_init__(self)  # zero-argument super() fails in a slots dataclass
        object.__setattr__(self, "max_payload", min(self.max_payload, self.header.max_payload))

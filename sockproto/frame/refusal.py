"""Refusing a frame connection: ERROR 5 (OVERLOADED), then a lingering close.

A server over ``max_connections`` (or shutting down) still accepts the TCP connection,
but only to say no: an ERROR 5 with id 0, about the connection, which fails every
request the client sent on it.  Closing right after writing it would be a mistake:
a socket closed with unread bytes (the client's first request, which may be on its
way) makes the kernel send a reset, and a reset can destroy the ERROR before the
client reads it.  So the refusal shuts its write side (FIN after the ERROR), reads
and discards what the client sends, and closes when the client does, or after
:data:`LINGER` seconds.  At most :data:`MAX_LINGERING` refusals linger at once per
service, so that a connection flood cannot pile them up; past that they close at once.
"""

from __future__ import annotations

from typing import Any, Final

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from ..core.header import HeaderSpec
from ..core.spf1 import ErrorCode, Kind, encode_error

__all__ = ["LINGER", "MAX_LINGERING", "FrameRefusal", "Lingering"]

LINGER: Final = 2.0
"""Seconds a refused connection waits for the client to close after the ERROR."""

MAX_LINGERING: Final = 64
"""Refused connections allowed to linger at once per service."""

_LOST = Failure(ConnectionDone())


class Lingering:
    """How many refusals of one service linger now (shared by its refusals)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class FrameRefusal(Protocol):
    """Tell one connection it is refused, with ERROR 5 if the header has an error channel.

    :param header: the service's wire header (without a kind field, no ERROR is sent:
        the connection is only closed).
    :param message: the ERROR's message.
    :param clock: times the linger.
    :param lingering: the service's count of lingering refusals.
    """

    def __init__(self, header: HeaderSpec, message: str, clock: IReactorTime, lingering: Lingering) -> None:
        self.header = header
        self.message = message
        self.clock = clock
        self.lingering = lingering
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        transport: Any = self.transport
        if self.header.has_kind:
            payload = encode_error(ErrorCode.OVERLOADED, self.message)
            transport.write(self.header.pack_frame_header(int(Kind.ERROR), 0, len(payload)) + payload)
        half_close = getattr(transport, "loseWriteConnection", None)  # TLS has none (twisted#5341)
        if half_close is None or self.lingering.count >= MAX_LINGERING:
            transport.loseConnection()
            return
        self.lingering.count += 1
        half_close()
        self._timer = self.clock.callLater(LINGER, transport.loseConnection)

    def dataReceived(self, data: bytes) -> None:
        """Read and forget: nothing a refused client sends is served (its end of file,
        not a half-closeable protocol's, ends the connection)."""

    def connectionLost(self, reason: Failure = _LOST) -> None:
        if self._timer is not None:
            self.lingering.count -= 1
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

"""The framed-header server: a Twisted protocol and factory over the sans-IO decoder.

Each complete request frame goes to the handler.  Synchronous answers are written
before :meth:`~FrameServerProtocol.dataReceived` returns, all the answers of one read
in one ``transport.write``.  Asynchronous answers (Deferreds, coroutines) are written
when they are ready: out of order when the header carries request ids (SPF/1), in
request order when it does not (``INT32``...).

Flow control: at most ``max_in_flight`` requests per connection wait for their answer;
beyond that, and while the transport's write buffer is full (the protocol is the
transport's push producer), the connection is not read, so a peer that floods or does
not read its answers costs bounded memory and never slows the others.

Limits: ``max_connections`` per service (over it a connection gets ERROR 5 and is
closed), ``idle_timeout`` per connection (closed after that long with nothing received
and nothing owed), ``handler_timeout`` per request (ERROR 6, the handler's Deferred
cancelled).  At shutdown each connection is *drained*: see :meth:`FrameServerProtocol.drain`.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.interfaces import IAddress, IReactorTime

from ..core.decoder import DEFAULT_MAX_PAYLOAD
from ..core.header import SPF1, HeaderSpec
from ..handlers import Handler
from ..serving.stream import StreamServerFactory, StreamServerProtocol
from .protocol import DEFAULT_MAX_IN_FLIGHT, FrameServerProtocol
from .refusal import FrameRefusal, Lingering

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "FrameServerFactory", "FrameServerProtocol"]


class FrameServerFactory(StreamServerFactory):
    """Build :class:`FrameServerProtocol` instances sharing one configuration and counters.

    :param handler: see :mod:`sockproto.handlers`.
    :param header: the wire header (default SPF/1).
    :param max_payload: the largest request accepted, capped at what the header's
        length field can express (16 MiB by default).
    :param max_in_flight: unanswered requests allowed per connection.
    :param max_connections: connections served at once; over it a new connection gets
        ERROR 5 and is closed (see :mod:`sockproto.frame.refusal`).  ``None``: no limit.
    :param idle_timeout: seconds a connection may stay without a whole frame received
        and without an answer owed; ``None``: no limit.
    :param handler_timeout: seconds an asynchronous handler has to answer (ERROR 6
        after that); ``None``: no limit.
    :param clock: schedules the timeouts (the global reactor by default).

    :ivar metrics: the service's :class:`~sockproto.serving.metrics.ServiceMetrics`.
    """

    kind = "frame"

    def __init__(
        self,
        handler: Handler,
        *,
        header: HeaderSpec = SPF1,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_connections: int | None = None,
        idle_timeout: float | None = None,
        handler_timeout: float | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        if max_payload < 0:
            raise ValueError(f"max_payload must be >= 0, not {max_payload}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        for name, value in (("idle_timeout", idle_timeout), ("handler_timeout", handler_timeout)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None, not {value}")
        super().__init__(max_connections=max_connections, clock=clock)
        self.handler = handler
        self.header = header
        self.max_payload = min(max_payload, header.max_payload)
        self.max_in_flight = max_in_flight
        self.idle_timeout = idle_timeout
        self.handler_timeout = handler_timeout
        self._lingering = Lingering()
        self._configured: tuple[dict[str, Any], type[StreamServerProtocol]] | None = None

    def build(self, addr: IAddress | None) -> FrameServerProtocol:
        """Return the protocol serving one admitted connection.

        Its settings are class attributes of a subclass made for this factory and made
        again when a setting changes (:meth:`StreamServerProtocol.configured
        <sockproto.serving.stream.StreamServerProtocol.configured>`): an idle connection
        holds only its own state.
        """
        settings = self.shared_settings(
            FrameServerProtocol.settings_of(
                self.handler, self.header, self.max_payload, self.max_in_flight,
                self.idle_timeout, self.handler_timeout,
            )
        )  # fmt: skip
        configured = self._configured
        if configured is None or configured[0] != settings:
            configured = self._configured = (settings, FrameServerProtocol.configured(settings))
        return cast(FrameServerProtocol, configured[1].for_connection())

    def refusal(self, addr: IAddress | None) -> FrameRefusal:
        """Return the protocol that answers one refused connection with ERROR 5."""
        message = (
            f"too many connections (the limit is {self.max_connections})"
            if self.tracker.accepting
            else "the server is shutting down"
        )
        return FrameRefusal(self.header, message, self._clock(), self._lingering)

"""The framed-header server: a Twisted protocol and factory over the sans-IO connection.

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
cancelled).  With ``proxy`` every connection starts with a PROXY header, read before
anything else (:class:`~sockproto.serving.proxy.ProxyHeaderState`): its source address
is the ``request.peer`` the handler sees.  At shutdown each connection is *drained*: see
:meth:`FrameServerProtocol.drain`.
"""

from __future__ import annotations

from twisted.internet.interfaces import IAddress, IReactorTime

from ..core.decoder import DEFAULT_MAX_PAYLOAD
from ..core.header import SPF1, HeaderSpec
from ..handlers import Handler
from ..serving.proxy import ProxySettings
from ..serving.settings import Setting
from ..serving.stream import StreamServerFactory
from ..serving.streaming import is_streaming
from .protocol import FrameServerProtocol
from .refusal import FrameRefusal, Lingering
from .settings import DEFAULT_MAX_IN_FLIGHT, FrameSettings

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "FrameServerFactory", "FrameServerProtocol"]


class FrameServerFactory(StreamServerFactory):
    """Build :class:`FrameServerProtocol` instances sharing one settings object and counters.

    :param handler: see :mod:`sockproto.handlers`.
    :param header: the wire header (default SPF/1).
    :param max_payload: the largest request accepted, capped at what the header's
        length field can express (16 MiB by default).  For a streaming handler
        (:func:`~sockproto.serving.streaming.streaming`: request frames reach it in
        pieces, see :mod:`sockproto.frame.streaming`) it may be ``None``: what the
        header can express (4 GiB - 1 for SPF/1).
    :param max_in_flight: unanswered requests allowed per connection.
    :param max_connections: connections served at once; over it a new connection gets
        ERROR 5 and is closed (see :mod:`sockproto.frame.refusal`).  ``None``: no limit.
    :param idle_timeout: seconds a connection may stay without a whole frame received
        and without an answer owed; ``None``: no limit.
    :param handler_timeout: seconds an asynchronous handler has to answer (ERROR 6
        after that); ``None``: no limit.
    :param clock: schedules the timeouts (the global reactor by default).
    :param proxy: every connection must start with a PROXY header (v1 or v2) sent by a
        peer of ``proxy.networks``; ``None`` (the default): no header is expected.  To
        expect one on some listeners only, listen there through a
        :class:`~sockproto.serving.proxy.ProxyEndpoint`.

    :ivar settings: the :class:`~sockproto.frame.settings.FrameSettings` every protocol
        built from now on holds (by reference).  Its fields are also attributes of the
        factory (``factory.max_payload = 1024``): setting one replaces the settings.
    :ivar metrics: the service's :class:`~sockproto.serving.metrics.ServiceMetrics`.
    """

    kind = "frame"
    protocol = FrameServerProtocol
    settings: FrameSettings

    header: Setting[HeaderSpec] = Setting()
    max_payload: Setting[int] = Setting()
    max_in_flight: Setting[int] = Setting()
    idle_timeout: Setting[float | None] = Setting()
    proxy: Setting[ProxySettings | None] = Setting()

    def __init__(
        self,
        handler: Handler,
        *,
        header: HeaderSpec = SPF1,
        max_payload: int | None = DEFAULT_MAX_PAYLOAD,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_connections: int | None = None,
        idle_timeout: float | None = None,
        handler_timeout: float | None = None,
        clock: IReactorTime | None = None,
        proxy: ProxySettings | None = None,
    ) -> None:
        super().__init__(max_connections=max_connections, clock=clock)
        self.settings = FrameSettings(
            **self.stream_settings(clock, None),
            handler=handler,
            handler_timeout=handler_timeout,
            header=header,
            max_payload=max_payload,  # type: ignore[arg-type]  # None: resolved by FrameSettings
            max_in_flight=max_in_flight,
            idle_timeout=idle_timeout,
            proxy=proxy,
        )
        self._lingering = Lingering()
        if is_streaming(handler):  # request frames reach the handler in pieces (sockproto.frame.streaming)
            from .streaming import FrameStreamingProtocol

            self.protocol = FrameStreamingProtocol

    def refusal(self, addr: IAddress | None) -> FrameRefusal:
        """Return the protocol that answers one refused connection with ERROR 5."""
        message = (
            f"too many connections (the limit is {self.max_connections})"
            if self.tracker.accepting
            else "the server is shutting down"
        )
        return FrameRefusal(self.settings.header, message, self._clock(), self._lingering)

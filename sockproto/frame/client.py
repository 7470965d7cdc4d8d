"""The framed-header client: ``request(payload)`` and ``ping()`` returning Deferreds."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, BinaryIO, cast

from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core.decoder import DEFAULT_MAX_PAYLOAD, Frame, FrameDecoder, Malformed, Oversized, UnexpectedKind
from ..core.header import SPF1, HeaderSpec, PayloadTooLarge
from ..core.spf1 import ErrorCode, Kind, decode_error
from ..halfclose.sending import file_chunks, send_body

__all__ = [
    "AnswerTooLarge",
    "FrameClientFactory",
    "FrameClientProtocol",
    "FrameProtocolError",
    "RemoteError",
    "RequestTimeout",
    "connect_frame",
]

_ID_LIMIT = 2**32


class RemoteError(Exception):
    """The server answered ERROR.

    :ivar code: the :class:`~sockproto.core.spf1.ErrorCode` (or an unknown int).
    :ivar message: the server's message.
    """

    def __init__(self, code: int, message: str) -> None:
        try:
            self.code: int = ErrorCode(code)
        except ValueError:
            self.code = code
        self.message = message
        name = self.code.name if isinstance(self.code, ErrorCode) else "UNKNOWN"
        super().__init__(f"server error {code} ({name}): {message}")


class AnswerTooLarge(Exception):
    """The answer announced more bytes than the client's ``max_payload``; it was skipped."""


class FrameProtocolError(Exception):
    """The server sent bytes that are not a valid frame stream; the connection is dropped."""


class RequestTimeout(TimeoutError):
    """No answer came within the request's timeout."""


class _Waiter:
    """One request waiting for its answer."""

    __slots__ = ("d", "timer")

    def __init__(self, d: Deferred[bytes]) -> None:
        self.d = d
        self.timer: IDelayedCall | None = None


class FrameClientProtocol(Protocol):
    """Send requests over one connection and match their answers.

    With an id-carrying header (SPF/1) answers are matched by id and may come in any
    order; without one they are matched in request order.

    :param header: the wire header; it must match the server's.
    :param max_payload: larger answers fail their request with :class:`AnswerTooLarge`.
    :param clock: the reactor used for timeouts (the global reactor by default).
    :param proxy_header: bytes sent first, as soon as the connection is made: a PROXY
        protocol header (:func:`~sockproto.core.proxy_encode.encode_v2`) for a server
        listening on ``proxy:``, as a load balancer would send it.
    """

    _log = Logger()

    def __init__(
        self,
        header: HeaderSpec = SPF1,
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        clock: IReactorTime | None = None,
        proxy_header: bytes = b"",
    ) -> None:
        self.header = header
        self.proxy_header = proxy_header
        self._clock = clock
        accept = frozenset((Kind.RESPONSE, Kind.ERROR, Kind.PONG))
        self._decoder: FrameDecoder[Frame] = FrameDecoder(
            header, max_payload=max_payload, accept_kinds=accept
        )
        self._by_id: dict[int, _Waiter] = {}
        self._in_order: deque[_Waiter | None] = deque()  # None: a request given up on
        self._next_id = 1
        self._lost: Failure | None = None
        self._closed: Deferred[None] = Deferred()
        self._queued: list[bytes] | None = None  # writes held while a streamed payload goes out
        self._stream_waiters: list[Deferred[None]] = []  # streamed requests waiting their turn

    # -- the API ----------------------------------------------------------------------

    def request(self, payload: bytes, *, timeout: float | None = None) -> Deferred[bytes]:
        """Send ``payload`` as a REQUEST; the Deferred fires with the answer's payload.

        It fails with :class:`RemoteError` if the server answers ERROR,
        :class:`RequestTimeout` after ``timeout`` seconds, or the connection-lost reason
        if the connection drops first.  Cancelling it forgets the request.

        :raises PayloadTooLarge: (in the Deferred) if the header cannot carry ``payload``.
        """
        return self._send(Kind.REQUEST, payload, timeout)

    def request_stream(
        self, body: BinaryIO | AsyncIterable[bytes], length: int, *, timeout: float | None = None
    ) -> Deferred[bytes]:
        """Send a REQUEST of ``length`` bytes read from ``body`` as they go out.

        ``body`` is a binary file (its next ``length`` bytes, read in chunks in the
        reactor thread: a regular file or a pipe) or an async iterator of ``bytes``;
        the next chunk is read only once the transport has room, so any size goes out
        in bounded memory (a streaming handler on the server takes it in pieces).
        Requests made meanwhile are sent after it.  The Deferred fires as
        :meth:`request`'s does; if ``body`` gives fewer or more than ``length`` bytes,
        the frame cannot be completed: the connection is aborted and the Deferred fails
        with :class:`ValueError`.
        """
        if self._queued is not None:  # one streamed payload at a time: the next waits its turn
            return self._after_stream().addCallback(
                lambda _: self.request_stream(body, length, timeout=timeout)
            )
        registered = self._register(Kind.REQUEST, length, timeout)
        if isinstance(registered, Deferred):
            return registered
        frame, waiter = registered
        assert self.transport is not None
        self.transport.write(frame)
        self._queued = []
        sent = send_body(self.transport, _exactly(body, length))
        sent.addCallbacks(self._streamed, self._stream_broken)
        return waiter.d

    def ping(self, payload: bytes = b"", *, timeout: float | None = None) -> Deferred[bytes]:
        """Send a PING; the Deferred fires with the PONG's payload (``payload`` echoed).

        :raises ValueError: if the header has no kind field (there is no PING then).
        """
        if not self.header.has_kind:
            raise ValueError(f"the {self.header.name} header has no kind field: nothing to ping with")
        return self._send(Kind.PING, payload, timeout)

    def close(self) -> Deferred[None]:
        """Close the connection; the Deferred fires once it is closed."""
        if self.transport is not None and self._lost is None:
            self.transport.loseConnection()
        return self.when_closed()

    def when_closed(self) -> Deferred[None]:
        """A Deferred firing when the connection is closed, by either side."""
        d: Deferred[None] = Deferred()

        def fire(result: None) -> None:
            d.callback(None)
            return result

        self._closed.addCallback(fire)
        return d

    @property
    def pending(self) -> int:
        """Requests waiting for their answer."""
        return len(self._by_id) + sum(1 for w in self._in_order if w is not None)

    # -- IProtocol --------------------------------------------------------------------

    def connectionMade(self) -> None:
        if self.proxy_header:
            self.transport.write(self.proxy_header)  # type: ignore[union-attr]  # connected

    def dataReceived(self, data: bytes) -> None:
        if self._lost is not None:
            return
        for event in self._decoder.feed(data):
            if isinstance(event, Frame):
                self._frame(event)
            elif isinstance(event, Oversized):
                limit = self._decoder.max_payload
                too_large = AnswerTooLarge(f"answer of {event.length} bytes is over the {limit}-byte limit")
                self._resolve(event.id, Failure(too_large))
            elif isinstance(event, Malformed):
                self._fail_all(Failure(FrameProtocolError(event.reason)))
                transport: Any = self.transport  # an ITCPTransport: it can abort
                transport.abortConnection()
            elif isinstance(event, UnexpectedKind):  # no stream_kinds here: no streamed events
                self._log.warn("ignored a frame of kind {kind} from the server", kind=event.kind)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self._lost = reason
        self._fail_all(reason)
        self._closed.callback(None)

    # -- internals --------------------------------------------------------------------

    def _send(self, kind: Kind, payload: bytes, timeout: float | None) -> Deferred[bytes]:
        registered = self._register(kind, len(payload), timeout)
        if isinstance(registered, Deferred):
            return registered
        frame, waiter = registered
        if self._queued is not None:  # a streamed payload is going out: after it
            self._queued += (frame, payload)
        else:
            self.transport.writeSequence([frame, payload])  # type: ignore[union-attr]  # registered: connected
        return waiter.d

    def _register(
        self, kind: Kind, length: int, timeout: float | None
    ) -> tuple[bytes, _Waiter] | Deferred[bytes]:
        """A request's header and waiter, or a failed Deferred if it cannot be sent."""
        if self._lost is not None:
            return fail(self._lost)
        assert self.transport is not None
        try:
            ident = self._allocate_id() if self.header.has_id else 0
            frame = self.header.pack_header(length, **self._fields(kind, ident))
        except (PayloadTooLarge, RuntimeError) as e:
            return fail(e)
        waiter = _Waiter(Deferred(lambda d: self._forget(ident, waiter)))
        if self.header.has_id:
            self._by_id[ident] = waiter
        else:
            self._in_order.append(waiter)
        if timeout is not None:
            waiter.timer = self._reactor().callLater(timeout, self._time_out, ident, waiter, timeout)
        return frame, waiter

    def _streamed(self, result: None) -> None:
        """A streamed payload is out: send what waited behind it."""
        queued, self._queued = self._queued, None
        if queued and self._lost is None:
            self.transport.writeSequence(queued)  # type: ignore[union-attr]
        self._streams_done()

    def _stream_broken(self, failure: Failure) -> None:
        """The body failed or gave the wrong length: the frame cannot be completed."""
        self._queued = None
        if self._lost is None:
            self._fail_all(failure)
            self.transport.abortConnection()  # type: ignore[union-attr]  # an ITCPTransport
        self._streams_done()

    def _after_stream(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._stream_waiters.append(d)
        return d

    def _streams_done(self) -> None:
        waiters, self._stream_waiters = self._stream_waiters, []
        for d in waiters:
            d.callback(None)

    def _fields(self, kind: Kind, ident: int) -> dict[str, int]:
        fields: dict[str, int] = {}
        if self.header.has_kind:
            fields["kind"] = kind
        if self.header.has_id:
            fields["id"] = ident
        return fields

    def _allocate_id(self) -> int:
        """The next free request id, from 1 up, wrapping (0 is the server's connection id)."""
        if len(self._by_id) >= _ID_LIMIT - 1:
            raise RuntimeError("every request id is in use")
        ident = self._next_id
        while ident in self._by_id:
            ident = ident % (_ID_LIMIT - 1) + 1
        self._next_id = ident % (_ID_LIMIT - 1) + 1
        return ident

    def _frame(self, frame: Frame) -> None:
        if frame.kind == Kind.ERROR:
            try:
                code, message = decode_error(frame.payload)
            except ValueError as e:
                code, message = ErrorCode.PROTOCOL_ERROR, str(e)
            error = Failure(RemoteError(code, message))
            if self.header.has_id and frame.id == 0:  # about the connection, not a request
                self._fail_all(error)
                return
            self._resolve(frame.id, error)
        else:
            self._resolve(frame.id, frame.payload)

    def _resolve(self, ident: int | None, outcome: bytes | Failure) -> None:
        """Fire the waiter of answer ``ident`` (the oldest request without ids)."""
        if self.header.has_id:
            waiter = self._by_id.pop(ident or 0, None)
        else:
            waiter = self._in_order.popleft() if self._in_order else None
        if waiter is None:
            self._log.debug("ignored an answer to an unknown or abandoned request {id}", id=ident)
            return
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        if isinstance(outcome, Failure):
            waiter.d.errback(outcome)
        else:
            waiter.d.callback(outcome)

    def _forget(self, ident: int, waiter: _Waiter) -> None:
        """Drop a request given up on; a late answer to it is then ignored."""
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        if self.header.has_id:
            if self._by_id.get(ident) is waiter:
                del self._by_id[ident]
        else:
            for i, other in enumerate(self._in_order):
                if other is waiter:
                    self._in_order[i] = None  # keep its place: its answer is still to come
                    break

    def _time_out(self, ident: int, waiter: _Waiter, timeout: float) -> None:
        waiter.timer = None
        self._forget(ident, waiter)
        waiter.d.errback(RequestTimeout(f"no answer within {timeout:g} s"))

    def _fail_all(self, reason: Failure) -> None:
        waiters = [*self._by_id.values(), *(w for w in self._in_order if w is not None)]
        self._by_id.clear()
        self._in_order.clear()
        for waiter in waiters:
            if waiter.timer is not None and waiter.timer.active():
                waiter.timer.cancel()
            waiter.d.errback(reason)

    def _reactor(self) -> IReactorTime:
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = cast(IReactorTime, reactor)
        assert self._clock is not None
        return self._clock


class FrameClientFactory(Factory):
    """Build :class:`FrameClientProtocol` instances (for ``endpoint.connect``)."""

    def __init__(
        self,
        header: HeaderSpec = SPF1,
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        clock: IReactorTime | None = None,
    ) -> None:
        self.header = header
        self.max_payload = max_payload
        self.clock = clock

    def buildProtocol(self, addr: IAddress | None) -> FrameClientProtocol:
        proto = FrameClientProtocol(self.header, max_payload=self.max_payload, clock=self.clock)
        proto.factory = self
        return proto


def connect_frame(
    endpoint: str | IStreamClientEndpoint,
    *,
    header: HeaderSpec = SPF1,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    reactor: Any = None,
    proxy_header: bytes = b"",
) -> Deferred[FrameClientProtocol]:
    """Connect to a frame server; the Deferred fires with the connected client.

    :param endpoint: a Twisted client endpoint string (``tcp:host=...:port=...``,
        ``unix:path=...``, ``tls:...``) or an endpoint.
    :param proxy_header: a PROXY protocol header sent before anything else (for a
        server listening on ``proxy:``; see :func:`~sockproto.core.proxy_encode.encode_v2`).
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    if isinstance(endpoint, str):
        endpoint = clientFromString(reactor, endpoint)
    proto = FrameClientProtocol(header, max_payload=max_payload, clock=reactor, proxy_header=proxy_header)
    connected: Deferred[FrameClientProtocol] = connectProtocol(endpoint, proto)
    return connected


async def _exactly(body: BinaryIO | AsyncIterable[bytes], length: int) -> AsyncIterator[bytes]:
    """``body``'s chunks, checked to add up to ``length`` bytes exactly (a file: its next
    ``length`` bytes).

    :raises ValueError: if it gives fewer, or more (an async iterator).
    """
    sent = 0
    async for chunk in body if isinstance(body, AsyncIterable) else file_chunks(body, length):
        sent += len(chunk)
        if sent > length:
            break
        yield chunk
    if sent != length:
        what = "more" if sent > length else f"only {sent}"
        raise ValueError(f"the request body gave {what} bytes, not the {length} announced")

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
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..answering import as_answer, call_handler
from ..core.decoder import DEFAULT_MAX_PAYLOAD, FrameDecoder, Malformed, Oversized, UnexpectedKind
from ..core.header import SPF1, HeaderSpec
from ..core.spf1 import ErrorCode, Kind, encode_error
from ..handlers import Handler
from ..request import Request, normalize_peer

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "FrameServerFactory", "FrameServerProtocol"]

DEFAULT_MAX_IN_FLIGHT = 64
"""Unanswered requests allowed per connection before it stops being read."""

_REQUEST, _RESPONSE, _ERROR, _PING, _PONG = (int(k) for k in Kind)
_SERVED_KINDS = frozenset((_REQUEST, _PING))
_LOST = Failure(ConnectionDone())


class _Slot:
    """An answer owed in request order (headers without ids)."""

    __slots__ = ("done", "fatal", "frames")

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.done = False
        self.fatal = False


@implementer(IPushProducer)
class FrameServerProtocol(Protocol):
    """Serve ``handler`` over one stream connection.

    :param handler: called with a :class:`~sockproto.request.Request` per request frame.
    :param header: the wire header.
    :param max_payload: larger requests are refused (SPF/1: ERROR 2; no error
        channel: the connection is closed) and their payload skipped unread.
    :param max_in_flight: unanswered requests allowed before reading pauses.
    """

    _log = Logger()

    def __init__(
        self,
        handler: Handler,
        *,
        header: HeaderSpec = SPF1,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self.handler = handler
        self.header = header
        self.max_in_flight = max_in_flight
        self._decoder: FrameDecoder[Request] = FrameDecoder(
            header,
            max_payload=max_payload,
            accept_kinds=_SERVED_KINDS,
            frame_type=Request,
        )
        self._ordered = not header.has_id  # answers must follow request order
        bare = header.names == (header.length_field,) and not header.length_offset
        self._bare_pack = header.struct.pack if bare else None
        self.peer: IAddress | None = None
        self._backlog: deque[Any] = deque()  # decoded events held back by flow control
        self._queue: deque[_Slot] = deque()  # ordered mode: answers owed, oldest first
        self._pending: set[Deferred[bytes]] = set()  # handlers still running
        self._batch: list[bytes] | None = None  # the answers of the read being served
        self._write_paused = False
        self._read_paused = False
        self._stopping = False  # no more requests are served; close once answers are out
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Requests received whose answer is not written yet."""
        return len(self._queue) if self._ordered else len(self._pending)

    # -- IProtocol --------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport  # ITransport, IConsumer and IPushProducer
        self.peer = normalize_peer(transport.getPeer())
        transport.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        if self._stopping:
            return
        events = self._decoder.feed(data)
        if self._backlog or self._blocked():
            self._backlog.extend(events)
            self._update_reading()
        else:
            self._serve(events)

    def connectionLost(self, reason: Failure = _LOST) -> None:
        self._closed = self._stopping = True
        self._backlog.clear()
        self._queue.clear()
        pending, self._pending = self._pending, set()
        for d in pending:
            d.cancel()

    # -- IPushProducer: the transport's write buffer is full, or drained --------------

    def pauseProducing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resumeProducing(self) -> None:
        self._write_paused = False
        self._drain()

    def stopProducing(self) -> None:
        self._stopping = True

    # -- serving ----------------------------------------------------------------------

    def _serve(self, events: list[Any]) -> None:
        """Answer ``events`` in order; the answers due now go out in one write."""
        out: list[bytes] = []
        self._batch = out
        write = out.append
        pack = self.header.pack_frame_header
        handler = self.handler
        peer = self.peer
        queue = self._queue
        max_answer = self.header.max_payload
        bare_pack = self._bare_pack
        rest: Iterator[Any] | None = iter(events)
        assert rest is not None
        try:
            for event in rest:
                if type(event) is Request:
                    if event.kind == _PING:
                        pong = [pack(_PONG, event.id or 0, len(event.payload)), event.payload]
                        if queue:
                            self._deliver(pong, False, None, out)
                        else:
                            out += pong
                        continue
                    event.peer = peer
                    try:
                        result: Any = handler(event)
                    except Exception:
                        self._deliver(*self._failed(event, Failure()), None, out)
                    else:
                        if type(result) is bytes and not queue and len(result) <= max_answer:
                            if bare_pack is not None:  # a bare length prefix: one C call
                                write(bare_pack(len(result)))
                            else:
                                write(pack(_RESPONSE, event.id, len(result)))
                            write(result)
                            continue
                        self._answer_later(event, result, out)
                    if self._blocked() or self._stopping:
                        break
                elif type(event) is Malformed:
                    self._malformed(event, out)
                else:
                    self._skipped(event, out)
                if self._stopping:
                    break
            else:
                rest = None
        finally:
            self._batch = None
        if rest is not None and not self._stopping:
            self._backlog.extend(rest)  # held back by flow control
        self._flush(out)
        self._update_reading()

    def _answer_later(self, request: Request, result: Any, out: list[bytes]) -> None:
        """Deal with anything but a plain bytes answer that can be written at once."""
        if not isinstance(result, Deferred):
            try:
                result = call_handler(lambda _: result, request)  # coroutine, bytes-like
            except TypeError:
                self._deliver(*self._failed(request, Failure()), None, out)
                return
        if isinstance(result, bytes):
            self._deliver(*self._framed(request, result), None, out)
            return
        slot = _Slot() if self._ordered else None
        if slot is not None:
            self._queue.append(slot)
        self._pending.add(result)
        result.addCallback(as_answer).addBoth(self._answered, request, slot, result)

    def _answered(
        self, result: bytes | Failure, request: Request, slot: _Slot | None, d: Deferred[bytes]
    ) -> None:
        """Write (or queue) an asynchronous answer when its handler is done."""
        self._pending.discard(d)
        if self._closed or (self._stopping and slot is None):
            return None
        frames, fatal = (
            self._failed(request, result) if isinstance(result, Failure) else self._framed(request, result)
        )
        if self._batch is not None:  # the Deferred fired inside handler(): keep order
            self._deliver(frames, fatal, slot, self._batch)
            return None
        out: list[bytes] = []
        self._deliver(frames, fatal, slot, out)
        self._flush(out)
        self._drain()
        return None

    def _framed(self, request: Request, data: bytes) -> tuple[list[bytes], bool]:
        """Frame one answer; one the header cannot carry becomes an ERROR 2 (or fatal)."""
        if len(data) <= self.header.max_payload:
            return [self.header.pack_frame_header(_RESPONSE, request.id or 0, len(data)), data], False
        message = f"answer of {len(data)} bytes does not fit the {self.header.name} header"
        self._log.error("{message} (request from {peer})", message=message, peer=self.peer)
        return self._error(request.id, ErrorCode.TOO_LARGE, message)

    def _failed(self, request: Request, failure: Failure) -> tuple[list[bytes], bool]:
        """Log a handler failure; return its ERROR 4 frame (or fatal, without an error channel)."""
        self._log.failure(
            "handler {handler!r} failed for {peer}", failure=failure, handler=self.handler, peer=self.peer
        )
        name = failure.type.__name__ if isinstance(failure.type, type) else str(failure.type)
        message = f"handler failed: {name}: {failure.getErrorMessage()}"
        return self._error(request.id, ErrorCode.HANDLER_FAILED, message)

    def _error(self, ident: int | None, code: ErrorCode, message: str) -> tuple[list[bytes], bool]:
        """Return an ERROR frame, or no frame and ``fatal`` when the header has no kind."""
        if not self.header.has_kind:
            return [], True
        payload = encode_error(code, message)
        return [self.header.pack_frame_header(_ERROR, ident or 0, len(payload)), payload], False

    def _skipped(self, event: Oversized | UnexpectedKind, out: list[bytes]) -> None:
        """Answer a frame whose payload the decoder discards, then go on."""
        if type(event) is Oversized:
            code = ErrorCode.TOO_LARGE
            what = f"payload of {event.length} bytes is over the {self._decoder.max_payload}-byte limit"
        else:
            code = ErrorCode.UNEXPECTED_KIND
            what = f"frame kind {event.kind} is not a request"
        self._log.warn("refused a frame from {peer}: {what}", peer=self.peer, what=what)
        self._deliver(*self._error(event.id, code, what), None, out)

    def _malformed(self, event: Malformed, out: list[bytes]) -> None:
        """A header that cannot be valid: say so (id 0) and close; a stream cannot resync."""
        self._log.warn("protocol error from {peer}: {reason}", peer=self.peer, reason=event.reason)
        frames, _ = self._error(0, ErrorCode.PROTOCOL_ERROR, event.reason)
        self._deliver(frames, True, None, out)

    def _deliver(self, frames: list[bytes], fatal: bool, slot: _Slot | None, out: list[bytes]) -> None:
        """Send ``frames`` now, or in request order; ``fatal`` closes the connection after."""
        if fatal:
            self._stop()
        if slot is None:
            if not self._queue:
                out += frames
                return
            slot = _Slot()
            self._queue.append(slot)
        slot.frames = frames
        slot.fatal = fatal
        slot.done = True
        queue = self._queue
        while queue and queue[0].done:
            head = queue.popleft()
            out += head.frames
            if head.fatal:
                queue.clear()

    def _flush(self, out: list[bytes]) -> None:
        """Write ``out`` in one call; close if stopping and nothing more is owed."""
        if self._closed:
            return
        assert self.transport is not None
        if out:
            self.transport.write(b"".join(out))
        if self._stopping and not self._queue:
            self._closed = True
            self.transport.loseConnection()

    def _stop(self) -> None:
        """Serve no more requests: the stream is broken or the header has no error channel."""
        self._stopping = True
        self._backlog.clear()

    # -- flow control -----------------------------------------------------------------

    def _blocked(self) -> bool:
        return self._write_paused or self.in_flight >= self.max_in_flight

    def _update_reading(self) -> None:
        """Pause or resume reading the transport to match the flow-control state."""
        pause = self._stopping or self._blocked() or bool(self._backlog)
        if pause != self._read_paused and not self._closed:
            transport: Any = self.transport  # an IPushProducer too: pausing stops reading
            self._read_paused = pause
            if pause:
                transport.pauseProducing()
            else:
                transport.resumeProducing()

    def _drain(self) -> None:
        """Serve the events held back by flow control, then read again if allowed."""
        while self._backlog and not self._blocked() and not self._stopping:
            events = list(self._backlog)
            self._backlog.clear()
            self._serve(events)
        self._update_reading()


class FrameServerFactory(Factory):
    """Build :class:`FrameServerProtocol` instances sharing one configuration.

    :param handler: see :mod:`sockproto.handlers`.
    :param header: the wire header (default SPF/1).
    :param max_payload: the largest request accepted, capped at what the header's
        length field can express (16 MiB by default).
    :param max_in_flight: unanswered requests allowed per connection.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        header: HeaderSpec = SPF1,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        if max_payload < 0:
            raise ValueError(f"max_payload must be >= 0, not {max_payload}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self.handler = handler
        self.header = header
        self.max_payload = min(max_payload, header.max_payload)
        self.max_in_flight = max_in_flight

    def buildProtocol(self, addr: IAddress | None) -> FrameServerProtocol:
        proto = FrameServerProtocol(
            self.handler,
            header=self.header,
            max_payload=self.max_payload,
            max_in_flight=self.max_in_flight,
        )
        proto.factory = self
        return proto

"""The frame server's protocol rules, sans-IO: one connection's state, bytes in, bytes out.

:class:`FrameServerConnection` is to the frame server what h11's ``Connection`` is to
HTTP: it decodes what the client sends, answers PINGs, refuses what it must (ERROR 1,
2, 3), keeps answers in request order when the header has no ids, bounds the requests
in flight, and says when to stop reading and when to close.  It does no I/O: the
caller feeds it bytes (:meth:`~FrameServerConnection.receive_data`, or
:meth:`~FrameServerConnection.serve` with the handler) and sends what
:meth:`~FrameServerConnection.data_to_send` returns.

Its state is one :class:`ConnectionState`::

    OPEN --start_drain(), eof_received()--> DRAINING --nothing owed, between frames--> MUST_CLOSE
    OPEN, DRAINING --fatal error, stop()--> CLOSING --the answers due before it sent--> MUST_CLOSE
    any --closed()--> CLOSED

With a streaming handler (``streamed=``), each request frame is handed over when its
header arrives, with a :class:`~sockproto.core.frame_stream.FrameBody` that its payload
fills as it arrives (never joined; see :mod:`sockproto.core.frame_stream` for the
bounded buffer and its backpressure).  Its answer or error, even one given before the
frame ended (a handler failing mid-body: ERROR 4), is sent once the frame's last byte
is read, so the connection stays usable; the requests after it are served by the
usual rules.

A fatal error is a broken header (ERROR 1, id 0: a stream cannot resynchronise), or any
error at all when the header has no ``kind`` field (no error channel).  The state moves
to MUST_CLOSE in :meth:`~FrameServerConnection.data_to_send`: the caller closes once it
has sent what that returned, then calls :meth:`~FrameServerConnection.closed`.

Plain Python: no Twisted import (the sans-IO rule).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from enum import Enum
from typing import Any, Final, Generic, Protocol, TypeVar

from .decoder import (
    DEFAULT_MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    Malformed,
    Oversized,
    StreamPiece,
    StreamStart,
    UnexpectedKind,
)
from .frame_stream import BodyHold, FrameBody, StreamedRequests
from .header import HeaderSpec
from .spf1 import ErrorCode, Kind, encode_error

__all__ = ["ConnectionState", "FrameCounters", "FrameServerConnection", "Later", "PeerFrame", "Report"]

_REQUEST, _RESPONSE, _ERROR, _PING, _PONG = (int(k) for k in Kind)
_SERVED_KINDS: Final = frozenset((_REQUEST, _PING))
_SHUTTING_DOWN: Final = "the server is shutting down"


class ConnectionState(Enum):
    """Where a frame server connection is in its life (see the module's diagram)."""

    OPEN = "open"  #: reading and serving
    DRAINING = "draining"  #: the frame under way is completed, what was received answered; then MUST_CLOSE
    CLOSING = "closing"  #: no more requests served; the answers due are sent, then MUST_CLOSE
    MUST_CLOSE = "must_close"  #: nothing more to send: the caller closes the connection
    CLOSED = "closed"  #: closed or lost: whatever comes later is dropped (abandoned)


_OPEN, _DRAINING, _CLOSING, _MUST_CLOSE, _CLOSED = ConnectionState
_SERVING = (_OPEN, _DRAINING)


class FrameCounters(Protocol):
    """The counters a connection adds to (a service's ``ServiceMetrics`` has them all)."""

    requests: int
    answers: int
    pings: int
    abandoned: int
    bytes_in: int
    bytes_out: int

    @property
    def errors(self) -> MutableMapping[ErrorCode, int]: ...


class PeerFrame(Frame):
    """A frame that can carry its sender's address (the default request type)."""

    __slots__ = ("peer",)
    peer: object


R = TypeVar("R", bound=Frame)

Later = Callable[[Any, object, Exception | None], object]
"""Takes over a request the handler did not answer with plain bytes:
``later(request, result, exception)``; the request is in flight until
:meth:`FrameServerConnection.answer` or :meth:`~FrameServerConnection.fail`."""

Streamed = Callable[[Any, FrameBody], object]
"""Starts a streamed request: ``streamed(request, body)``, when its header arrives.  The
request is in flight until :meth:`FrameServerConnection.answer` or
:meth:`~FrameServerConnection.fail`; it must not raise."""

Report = Callable[[str, str], object]
"""Told ``(category, message)`` of what the caller may log: ``frame_refused``,
``protocol_error``, ``answer_too_large``."""


class _Unanswered:
    """What :meth:`FrameServerConnection.receive_data`'s handler returns: answer later."""


_UNANSWERED: Final = _Unanswered()


def _unanswered(request: object) -> _Unanswered:
    return _UNANSWERED


def _ignore(category: str, message: str) -> None:
    """The default :data:`Report`: nothing is logged."""


class _Sized:
    """The mark ending the frames of a sized answer: its payload follows in pieces."""

    __slots__ = ("length", "request")

    def __init__(self, request: object, length: int) -> None:
        self.request = request
        self.length = length


class FrameServerConnection(Generic[R]):
    """The server side of one frame connection.

    :param header: the wire header.
    :param max_payload: larger requests get ERROR 2 (fatal without an error channel),
        their payload skipped unread; at most ``header.max_payload``.
    :param max_in_flight: requests awaiting their answer before :attr:`wants_read` is
        False and decoded requests are held back.
    :param counters: what to count into (requests, answers, pings, errors, abandoned,
        bytes), per read rather than per frame.
    :param frame_type: the class built for each request; it must take a ``peer``
        attribute, set to :attr:`peer` before the handler sees it.
    :param peer: the client's address, given to every request.
    :param report: told what the caller may log (see :data:`Report`).
    :param streamed: stream request frames to this (see :data:`Streamed`) instead of
        giving whole ones to the handler; ``max_payload`` then bounds the streamed
        payloads, and PINGs (still whole) stay under the default 16 MiB.
    :param stream_type: the class built for streamed requests (``frame_type`` if
        ``None``).
    :param hold: the bound on the body bytes held (streaming only; a default one if
        ``None``).

    :ivar state: the :class:`ConnectionState`.
    :ivar refuse_pings: answer PINGs with ERROR 5 instead of PONG, closing the
        connection after it when nothing is owed on it (requests are otherwise still
        served): set during a shutdown's grace period, so that a load balancer's PING
        health check marks the server down before it stops listening.
    """

    __slots__ = (
        "_backlog",
        "_decoder",
        "_frame_type",
        "_held_out",
        "_ordered",
        "_out",
        "_owed",
        "_reading",
        "_sending",
        "_sending_left",
        "_serving",
        "_streamed",
        "_streams",
        "_waiting",
        "_write_paused",
        "counters",
        "header",
        "max_in_flight",
        "max_payload",
        "peer",
        "refuse_pings",
        "report",
        "state",
    )

    def __init__(
        self,
        header: HeaderSpec,
        *,
        max_payload: int,
        max_in_flight: int,
        counters: FrameCounters,
        frame_type: type[R] = PeerFrame,  # type: ignore[assignment]
        peer: object = None,
        report: Report = _ignore,
        streamed: Streamed | None = None,
        stream_type: type[R] | None = None,
        hold: BodyHold | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self.header: Final = header
        self.max_payload: Final = min(max_payload, header.max_payload)
        self.max_in_flight: Final = max_in_flight
        self.counters = counters
        self.peer = peer
        self.report = report
        self.state = _OPEN
        self.refuse_pings = False
        self._frame_type = frame_type
        self._streamed = streamed
        self._streams: StreamedRequests | None = None
        if streamed is not None:
            self._streams = StreamedRequests(
                header, frame_type if stream_type is None else stream_type, hold or BodyHold()
            )
        self._decoder: FrameDecoder[R] | None = FrameDecoder(
            header,
            max_payload=self.max_payload if streamed is None else min(self.max_payload, DEFAULT_MAX_PAYLOAD),
            accept_kinds=_SERVED_KINDS,
            frame_type=frame_type,
            stream_kinds=None if streamed is None else (_REQUEST,),
            max_streamed=self.max_payload,
        )
        self._ordered = not header.has_id  # answers must follow request order
        # ordered mode: the requests owed an answer, oldest first, with their frames once
        # done; the shared empty tuple until used
        self._owed: dict[object, tuple[list[bytes], bool] | None] | tuple[()] = ()
        self._waiting = 0  # with ids: requests handed over and not answered yet
        self._backlog: list[Any] | tuple[()] = ()  # decoded events held back by flow control
        self._out: list[bytes] = []  # bytes due, joined by data_to_send
        self._write_paused = False  # an input: the peer does not read (pause_writing)
        # a sized answer whose payload goes out in pieces (answer_sized): its request,
        # the bytes it still owes, and the frames due after it, held until it ends
        self._sending: object = None
        self._sending_left = 0
        self._held_out: list[list[Any]] = []
        self._reading = True  # what the caller was last told (reading_change)
        self._serving = False  # inside serve(): answers join the batch, no state change

    # -- what the caller asks ---------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Requests handed over (or queued in request order) whose answer is not sent yet."""
        return len(self._owed) if self._ordered else self._waiting

    @property
    def between_frames(self) -> bool:
        """Whether no frame is partly received."""
        return self._decoder is None or self._decoder.idle

    @property
    def must_close(self) -> bool:
        """Whether the caller must close the connection, once :meth:`data_to_send` is sent."""
        return self.state is _MUST_CLOSE

    @property
    def serving(self) -> bool:
        """Whether :meth:`serve` is running (an answer given now joins its batch)."""
        return self._serving

    @property
    def reading(self) -> bool:
        """Whether the caller reads, as :meth:`reading_change` last told it."""
        return self._reading

    @property
    def wants_read(self) -> bool:
        """Whether more bytes should be read: False while blocked, holding a backlog,
        closing, or draining between frames."""
        state = self.state
        streams = self._streams
        paused = False
        if streams is not None:
            paused = streams.hold.paused
            if streams.incoming is not None:  # a streamed request's body: read unless too much is held
                return state in _SERVING and not paused
        if state is _OPEN:
            pass
        elif state is not _DRAINING or self.between_frames:
            return False
        return not (self._backlog or paused or self._blocked())

    @property
    def hold(self) -> BodyHold | None:
        """The bound on the streamed bodies' bytes held (``None``: no streaming handler)."""
        return None if self._streams is None else self._streams.hold

    @property
    def receiving_body(self) -> bool:
        """Whether a streamed request's frame is under way (its handler has part of it)."""
        return self._streams is not None and self._streams.incoming is not None

    def fed_bodies(self) -> list[FrameBody]:
        """The bodies given bytes (or ended) since last asked: their readers are to be woken."""
        return [] if self._streams is None else self._streams.fed_bodies()

    def reading_change(self) -> bool | None:
        """The change to make to reading, if :attr:`wants_read` changed: True to resume,
        False to pause, ``None`` for none (nothing is changed once closed)."""
        wanted = self.wants_read
        if wanted is self._reading or self.state is _CLOSED:
            return None
        self._reading = wanted
        return wanted

    def wants_answer(self, request: object) -> bool:
        """Whether an answer to ``request`` would still be sent (else it is abandoned)."""
        if self._ordered:
            return self.state is not _CLOSED and request in self._owed
        return self.state in _SERVING

    # -- bytes in -----------------------------------------------------------------------

    def serve(self, data: bytes, handler: Callable[[R], object], later: Later) -> int:
        """Decode ``data`` and serve it: the hot path.

        Each request goes to ``handler``; a plain ``bytes`` answer that fits is framed at
        once, anything else (or an exception) goes to ``later`` (see :data:`Later`).
        PINGs and refused frames are answered here.  What flow control holds back is
        served by :meth:`serve_backlog`.

        :return: how many frames ``data`` completed (activity, for an idle timeout).
        """
        decoder = self._decoder
        if self.state not in _SERVING or decoder is None:
            return 0
        self.counters.bytes_in += len(data)
        events = decoder.feed(data)
        if self._streams is not None and self._streams.incoming is not None:
            events = self._feed_body(events)  # the rest of an admitted streamed frame: never held back
        if self._backlog or self._blocked():
            self._hold_back(events)
        else:
            self._serve(events, handler, later)
        return len(events)

    def serve_backlog(self, handler: Callable[[R], object], later: Later) -> None:
        """Serve what flow control held back, as far as it now allows."""
        while self._backlog and not self._serving and self.state in _SERVING and not self._blocked():
            events, self._backlog = list(self._backlog), ()
            self._serve(events, handler, later)

    def receive_data(self, data: bytes) -> list[R]:
        """Decode ``data``; return the requests to give the handler, each in flight until
        :meth:`answer` or :meth:`fail` (the others are held back beyond ``max_in_flight``)."""
        taken: list[R] = []
        self.serve(data, _unanswered, lambda request, result, exc: taken.append(request))
        return taken

    def next_requests(self) -> list[R]:
        """Like :meth:`receive_data` with no new bytes: the requests held back, now allowed."""
        taken: list[R] = []
        self.serve_backlog(_unanswered, lambda request, result, exc: taken.append(request))
        return taken

    def _blocked(self) -> bool:
        """Whether no more requests may be served now: the peer does not read, a sized
        answer goes out, or ``max_in_flight`` requests await their answer."""
        return self._write_paused or self._sending is not None or self.in_flight >= self.max_in_flight

    def _feed_body(self, events: list[Any]) -> list[Any]:
        """Give the leading pieces of ``events`` to the incoming body; return the rest."""
        for i, event in enumerate(events):
            if type(event) is not StreamPiece:
                return events[i:]
            self._piece(event)
            if event.last:
                return events[i + 1 :]
        return []

    def _serve(self, events: list[Any], handler: Callable[[R], object], later: Later) -> None:
        """Serve ``events`` in order, counted once for all of them."""
        out = self._out
        write = out.append
        header = self.header
        pack = header.pack_frame_header
        bare_pack = header.pack_bare
        # An answer that may be short of the header's min_payload takes the slow path.
        max_answer = header.max_payload if not header.min_payload else -1
        peer = self.peer
        ftype = self._frame_type
        owed = self._owed
        pings = slow = pieces = 0  # counted per read, in locals: no per-frame attribute work
        rest: Iterator[Any] = iter(events)  # kept: what a break leaves is held back
        self._serving = True
        try:
            for event in rest:
                if type(event) is ftype:
                    if event.kind == _PING:
                        pings += 1
                        if self.refuse_pings:  # shutting down: fail the balancer's health check,
                            # and close the connection if nothing is owed on it (a checker or an
                            # idle pool connection then goes elsewhere at once)
                            refusal = self._error(event.id, ErrorCode.OVERLOADED, _SHUTTING_DOWN)[0]
                            self._deliver(None, refusal, not self.in_flight)
                            if self.state not in _SERVING:
                                break
                            continue
                        pong = [pack(_PONG, event.id or 0, len(event.payload)), event.payload]
                        if owed:
                            self._deliver(None, pong)
                        else:
                            out += pong
                        continue
                    event.peer = peer  # type: ignore[attr-defined]  # frame_type takes one
                    try:
                        result = handler(event)
                    except Exception as exc:
                        slow += 1
                        self._hand_over(event, None, exc, later)
                    else:
                        if type(result) is bytes and not owed and len(result) <= max_answer:
                            if bare_pack is not None:  # a bare length prefix: one C call
                                write(bare_pack(len(result)))
                            else:
                                write(pack(_RESPONSE, event.id, len(result)))
                            write(result)
                            continue
                        slow += 1
                        self._hand_over(event, result, None, later)
                        owed = self._owed  # it may have been created
                    if self.state not in _SERVING or self._blocked():
                        break
                elif type(event) is StreamPiece:
                    pieces += 1
                    self._piece(event)
                    if event.last and (self.state not in _SERVING or self._blocked()):
                        break
                elif type(event) is StreamStart:
                    slow += 1
                    self._stream_start(event)
                    owed = self._owed  # it may have been created
                else:
                    slow += 1
                    self._refused(event)
                    if self.state not in _SERVING:
                        break
        finally:
            self._serving = False
        left = list(rest)  # empty unless the loop stopped early
        served = len(events) - len(left) - pieces
        if left and self.state in _SERVING:
            self._hold_back(left)
        # Every event served but the PINGs counts as a request; those not answered at
        # once (``slow``) count their answer or error where it is made.
        counters = self.counters
        counters.requests += served - pings
        counters.answers += served - pings - slow
        if pings:
            counters.pings += pings

    def _hand_over(self, request: R, result: object, exc: Exception | None, later: Later) -> None:
        """Owe ``request`` an answer, then give it to ``later``."""
        self._owe(request)
        later(request, result, exc)

    def _owe(self, request: object) -> None:
        if not self._ordered:
            self._waiting += 1
        elif self._owed:
            self._owed[request] = None
        else:
            self._owed = {request: None}

    # -- streamed requests ----------------------------------------------------------------

    def _stream_start(self, event: StreamStart) -> None:
        """A streamed request frame begins: owe it an answer, start its handler with its body."""
        assert self._streams is not None and self._streamed is not None
        request, body = self._streams.begin(event, self.peer)
        self._owe(request)
        self._streamed(request, body)

    def _piece(self, event: StreamPiece) -> None:
        """Payload bytes of the arriving request; at its last, send its answer if given early."""
        assert self._streams is not None
        done = self._streams.piece(event)
        if done is not None:
            self._deliver(done[0], *done[1])

    def _cut_incoming(self) -> None:
        """The connection ends mid-frame: the arriving request's body is truncated, its answer dropped."""
        cut = None if self._streams is None else self._streams.cut()
        if cut is None:
            return
        request, answered = cut
        if self._ordered and self._owed:
            self._owed.pop(request, None)
        if answered:  # taken back already: its answer is dropped, not counted again
            return
        self.counters.abandoned += 1
        if not self._ordered:
            self._waiting -= 1

    def _refused(self, event: Malformed | Oversized | UnexpectedKind) -> None:
        """Answer a frame that is not served: a broken header is fatal, others are skipped."""
        if isinstance(event, Malformed):
            self.report("protocol_error", event.reason)
            frames, _ = self._error(0, ErrorCode.PROTOCOL_ERROR, event.reason)
            self._deliver(None, frames, fatal=True)
            return
        if type(event) is Oversized:
            code = ErrorCode.TOO_LARGE
            what = f"payload of {event.length} bytes is over the {self.max_payload}-byte limit"
        else:
            code = ErrorCode.UNEXPECTED_KIND
            what = f"frame kind {event.kind} is not a request"
        self.report("frame_refused", what)
        self._deliver(None, *self._error(event.id, code, what))

    def _hold_back(self, events: list[Any]) -> None:
        if self._backlog:
            self._backlog.extend(events)
        else:
            self._backlog = list(events)

    # -- answers ------------------------------------------------------------------------

    def answer(self, request: R, payload: bytes) -> None:
        """Answer ``request`` (handed over earlier) with ``payload``: a RESPONSE, or
        ERROR 2 if the header cannot carry it (fatal without an error channel)."""
        self._respond(request, len(payload), payload)

    def _respond(self, request: R, length: int, payload: bytes | _Sized) -> None:
        """A RESPONSE of ``length`` bytes (``payload``, or a :class:`_Sized` mark: in
        pieces later), or ERROR 2 if the header cannot say ``length``."""
        if not self._took_back(request):
            return
        header = self.header
        if header.min_payload <= length <= header.max_payload:
            self.counters.answers += 1
            self._send(request, [header.pack_frame_header(_RESPONSE, request.id or 0, length), payload])
            return
        message = f"answer of {length} bytes does not fit the {header.name} header"
        if length < header.min_payload:
            message += f" (its length adjustment needs at least {header.min_payload} bytes)"
        self.report("answer_too_large", message)
        self._send(request, *self._error(request.id, ErrorCode.TOO_LARGE, message))

    def fail(self, request: R, code: ErrorCode, message: str) -> None:
        """Answer ``request`` with an ERROR (fatal without an error channel)."""
        if self._took_back(request):
            self._send(request, *self._error(request.id, code, message))

    def abandon(self, request: R) -> None:
        """``request`` will not be answered (its handler was cancelled, its connection lost)."""
        self._took_back(request)

    def _send(self, request: R, frames: list[Any], fatal: bool = False) -> None:
        """Send the answer to ``request`` now, or at the end of its frame if it is still arriving."""
        if self._streams is None or not self._streams.hold_early(request, frames, fatal):
            self._deliver(request, frames, fatal)

    def _took_back(self, request: R) -> bool:
        """Whether the answer to ``request`` is to be sent; count it abandoned if not."""
        if self._streams is not None and not self._streams.took_back(request):
            return False  # cut short: counted then
        if not self._ordered:
            self._waiting -= 1
            wanted = self.state in _SERVING
        else:
            wanted = self.state is not _CLOSED and request in self._owed
        if not wanted:
            self.counters.abandoned += 1
        return wanted

    def _error(self, ident: int | None, code: ErrorCode, message: str) -> tuple[list[bytes], bool]:
        """An ERROR frame, or none and ``fatal`` when the header has no kind."""
        self.counters.errors[code] += 1
        payload = encode_error(code, message)
        if not self.header.has_kind or len(payload) < self.header.min_payload:
            return [], True  # no error channel (or none this short): close instead
        return [self.header.pack_frame_header(_ERROR, ident or 0, len(payload)), payload], False

    def _deliver(self, request: object, frames: list[Any], fatal: bool = False) -> None:
        """Send ``frames`` now, or in request order; ``fatal`` closes after them.

        ``request`` is the request they answer (owed in request order), or ``None`` for
        frames due now (a PONG, a refusal), which still wait behind answers owed.
        """
        if fatal:
            self._stop()
        owed = self._owed
        if not self._ordered or (request is None and not owed):
            self._emit(frames)
            return
        if request is None:
            request = object()
        if not owed:
            return  # cleared by an earlier fatal answer: nothing after it is sent
        owed[request] = (frames, fatal)
        self._flush_owed()

    def _flush_owed(self) -> None:
        """Send the answers owed in request order that are done, oldest first."""
        owed = self._owed
        while owed and self._sending is None:
            head = next(iter(owed))
            done = owed[head]
            if done is None:
                break
            del owed[head]
            self._emit(done[0])
            if done[1]:
                self._owed = ()  # nothing after a fatal answer is sent
                break

    def _emit(self, frames: list[Any]) -> None:
        """Append ``frames`` to the bytes due, or hold them while a sized answer goes out;
        a :class:`_Sized` mark at their end starts one."""
        if self._sending is not None:
            self._held_out.append(frames)
        elif frames and type(frames[-1]) is _Sized:
            mark = frames[-1]
            self._out += frames[:-1]
            self._sending, self._sending_left = mark.request, mark.length
        else:
            self._out += frames

    # -- sized answers, their payload in pieces -----------------------------------------

    @property
    def sending(self) -> object:
        """The request whose sized answer's payload is to go out now (see
        :meth:`answer_sized`), or ``None``."""
        return self._sending

    def answer_sized(self, request: R, length: int) -> None:
        """Answer ``request`` with a RESPONSE of ``length`` bytes given later in pieces.

        Its header is sent in turn (in request order without ids; after the request's
        frame if it is still arriving); once it is, :attr:`sending` is ``request``, and
        the payload goes by :meth:`answer_data` then :meth:`answer_end`.  Until then
        nothing else is sent and no request is served (a frame's bytes cannot be
        interleaved).  ERROR 2 instead if the header cannot say ``length``.
        """
        self._respond(request, length, _Sized(request, length))

    def answer_data(self, request: object, data: bytes) -> bool:
        """Some of :attr:`sending`'s payload; ``False`` if it is more than its length said
        (the connection must then be reset: the frame cannot be completed)."""
        if request is not self._sending:
            return self.state is _CLOSED  # closed meanwhile: dropped quietly
        left = self._sending_left = self._sending_left - len(data)
        if left < 0:
            return False
        self._out.append(data)
        return True

    def answer_end(self, request: object) -> bool:
        """:attr:`sending`'s payload is complete: what was held goes out; ``False`` if it
        was shorter than its length said (the connection must then be reset)."""
        if request is not self._sending:
            return self.state is _CLOSED
        if self._sending_left:
            return False
        self._sending = None
        held, self._held_out = self._held_out, []
        for index, frames in enumerate(held):
            self._emit(frames)
            if self._sending is not None:  # another sized answer: the rest waits again
                self._held_out = held[index + 1 :] + self._held_out
                break
        self._flush_owed()
        return True

    # -- bytes out ----------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """The bytes to send now; afterwards, :attr:`must_close` says whether to close."""
        out = self._out
        if out:
            data = b"".join(out)
            out.clear()
            self.counters.bytes_out += len(data)
        else:
            data = b""
        state = self.state
        if state is _CLOSING:
            if not self._owed and self._sending is None:
                self.state = _MUST_CLOSE
        elif state is _DRAINING and not self._serving and self.between_frames:
            if not (self.in_flight or self._backlog or self._sending is not None):
                self.state = _MUST_CLOSE
        elif state is _CLOSED:
            return b""
        return data

    # -- other inputs -------------------------------------------------------------------

    def pause_writing(self) -> None:
        """The peer does not read (a full write buffer): serve no more until resumed."""
        self._write_paused = True

    def resume_writing(self) -> None:
        """The peer reads again: :meth:`serve_backlog` may go on."""
        self._write_paused = False

    def start_drain(self) -> None:
        """Shut down gracefully: complete the frame under way, answer every request
        received, then close."""
        if self.state is _OPEN:
            self.state = _DRAINING

    def eof_received(self) -> None:
        """The client sent all it will: answer what it sent, then close (a frame left
        incomplete is dropped)."""
        self.start_drain()
        self._decoder = None
        self._cut_incoming()
        self._drop_unfinished_backlog()

    def _drop_unfinished_backlog(self) -> None:
        """Forget a streamed frame held back by flow control that the end of file left
        unfinished: it would start a request whose body never ends."""
        backlog = self._backlog
        for index in range(len(backlog) - 1, -1, -1):
            event = backlog[index]
            if type(event) is StreamStart:
                self._backlog = list(backlog[:index])
                return
            if type(event) is not StreamPiece or event.last:
                return

    def stop(self) -> None:
        """Serve no more requests; close once the answers due in request order are sent."""
        if self.state in _SERVING:
            self.state = _CLOSING
        self._backlog = ()
        self._cut_incoming()

    _stop = stop

    def time_out(self) -> bool:
        """The idle timeout passed: :meth:`stop` unless answers are owed; whether it did.

        A streamed frame under way that made no progress for that long (the client
        stopped sending mid-body, or the handler stopped taking it) is cut short: the
        caller is to reset the connection (see :attr:`receiving_body`).
        """
        if self.receiving_body:
            self.stop()  # cuts the arriving request short
            return True
        if self.in_flight or self._backlog or self._sending is not None or self.state not in _SERVING:
            return False
        self.stop()
        return True

    def closed(self) -> None:
        """The connection is closed (by the caller) or lost: drop everything from now on."""
        self._cut_incoming()
        if self._streams is not None:
            self._streams.close()  # what their handlers did not take is lost
        self.state = _CLOSED
        self._backlog = self._owed = ()
        self._out.clear()
        self._sending, self._held_out = None, []

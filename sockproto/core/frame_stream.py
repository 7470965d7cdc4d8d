"""The body of a streamed request frame, sans IO: pieces held until the handler takes them.

A frame server connection with a streaming handler
(:class:`~sockproto.core.frame_connection.FrameServerConnection`, ``streamed=``) gives
each request frame's payload to a :class:`FrameBody` as it arrives, never joined.  The
bodies of one connection share a :class:`BodyHold`: past its ``high_water`` bytes held
(by all of them together) the connection stops reading, and resumes once the handlers
have taken enough to leave ``low_water`` bytes or fewer.  So a connection holds at most
``high_water`` plus one read of request bodies, whatever their sizes and however many
requests are in flight.

:class:`StreamedRequests` keeps a connection's streamed requests: the one whose frame
is arriving, an answer given before its frame ended (held until the frame's last byte
is read), and the bodies of those not answered yet (dropped at their answer).

A body ends three ways: its frame's last byte arrived and the handler took it all
(:attr:`FrameBody.ended`); the handler answered or failed before that
(:meth:`FrameBody.drop`: the rest of the frame is read and discarded, so that the
connection stays usable); or the connection ended mid-frame (:meth:`FrameBody.cut`:
:attr:`FrameBody.truncated`, the handler's iteration fails).

Plain Python: no Twisted import (the sans-IO rule).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final

from .decoder import StreamPiece, StreamStart
from .header import HeaderSpec

__all__ = ["DEFAULT_HIGH_WATER", "DEFAULT_LOW_WATER", "BodyHold", "FrameBody", "StreamedRequests"]

DEFAULT_HIGH_WATER: Final = 1024 * 1024
"""Body bytes held per connection before reading pauses (1 MiB)."""

DEFAULT_LOW_WATER: Final = 256 * 1024
"""Body bytes held at most when paused reading resumes."""


class BodyHold:
    """The body bytes one connection holds, and whether its reading is paused for them.

    :param high_water: bytes held past which reading pauses.
    :param low_water: bytes held at or under which paused reading resumes.
    :ivar held: body bytes received and not yet taken (or dropped).
    :ivar paused: whether reading is paused for them.
    """

    __slots__ = ("held", "high_water", "low_water", "paused")

    def __init__(self, high_water: int = DEFAULT_HIGH_WATER, low_water: int = DEFAULT_LOW_WATER) -> None:
        if not 0 <= low_water < high_water:
            raise ValueError(f"need 0 <= low_water < high_water, not {low_water}, {high_water}")
        self.high_water = high_water
        self.low_water = low_water
        self.held = 0
        self.paused = False

    def add(self, n: int) -> None:
        """``n`` more bytes are held; pause past the high-water mark."""
        held = self.held = self.held + n
        if held > self.high_water:
            self.paused = True

    def release(self, n: int) -> bool:
        """``n`` bytes are no longer held; whether that resumed paused reading."""
        held = self.held = self.held - n
        if self.paused and held <= self.low_water:
            self.paused = False
            return True
        return False


class FrameBody:
    """The payload of one streamed request frame, in the pieces it arrived in.

    It offers what :class:`~sockproto.serving.streaming.Body` reads: :meth:`take`,
    :attr:`ended`, :attr:`finished`, :attr:`truncated`, :attr:`paused` and
    :meth:`resume_wanted`.

    :param length: the payload's length, from the frame's header.
    :param hold: the connection's :class:`BodyHold`.
    :ivar received: payload bytes arrived so far (taken, held or dropped).
    :ivar complete: whether the frame's last byte arrived.
    :ivar reader: what the caller attaches to wake a reader (opaque here).
    """

    __slots__ = (
        "_chunks",
        "_dropped",
        "_resumed",
        "complete",
        "hold",
        "length",
        "reader",
        "received",
        "truncated",
    )

    def __init__(self, length: int, hold: BodyHold) -> None:
        self.length = length
        self.hold = hold
        self.received = 0
        self.complete = False
        self.truncated = False
        self.reader: object = None
        self._chunks: deque[bytes] = deque()
        self._dropped = False
        self._resumed = False

    # -- the connection's side ----------------------------------------------------------

    def push(self, data: bytes, last: bool) -> None:
        """Some payload bytes arrived (``last``: the frame's last); held unless dropped."""
        self.received += len(data)
        if last:
            self.complete = True
        if data and not self._dropped:
            self._chunks.append(data)
            self.hold.add(len(data))

    def drop(self) -> None:
        """The handler is done with the body (answered or failed): discard what is held and the rest."""
        if self._dropped:
            return
        self._dropped = True
        self._release(sum(len(c) for c in self._chunks))
        self._chunks.clear()

    def cut(self) -> None:
        """The connection ended before the frame did, or before the reader took it all:
        the body can never be read whole."""
        if not self.ended and not self._dropped:
            self.truncated = True
        self.drop()

    # -- the reader's side ----------------------------------------------------------------

    @property
    def ended(self) -> bool:
        """Whether the reader has taken the whole body (the frame is complete, nothing held)."""
        return self.complete and not self._chunks

    @property
    def finished(self) -> bool:
        """Whether nothing more will be handed to the reader (dropped or cut)."""
        return self._dropped

    @property
    def paused(self) -> bool:
        """Whether taking a chunk may resume the connection's reading."""
        return self.hold.paused or self._resumed

    def take(self) -> bytes | None:
        """The oldest chunk held, or ``None`` if none is; check :meth:`resume_wanted` after."""
        if not self._chunks:
            return None
        chunk = self._chunks.popleft()
        self._release(len(chunk))
        return chunk

    def resume_wanted(self) -> bool:
        """Whether the connection's paused reading is to resume now (said once)."""
        resumed, self._resumed = self._resumed, False
        return resumed

    def _release(self, n: int) -> None:
        if n and self.hold.release(n):
            self._resumed = True


Frames = tuple[list[bytes], bool]
"""An answer's frames, and whether the connection closes after them (no error channel)."""


class StreamedRequests:
    """One frame connection's streamed requests, sans IO.

    :param header: the wire header (the requests' ``spec``).
    :param request_type: the class built for each request (a
        :class:`~sockproto.core.decoder.Frame` subclass with a ``peer``).
    :param hold: the bound on the body bytes the connection holds.

    :ivar incoming: the request whose frame is arriving, or ``None``.
    """

    __slots__ = (
        "_bodies",
        "_cut",
        "_early",
        "_fed",
        "header",
        "hold",
        "incoming",
        "incoming_body",
        "request_type",
    )

    def __init__(self, header: HeaderSpec, request_type: type[Any], hold: BodyHold) -> None:
        self.header = header
        self.request_type = request_type
        self.hold = hold
        self.incoming: Any = None
        self.incoming_body: FrameBody | None = None
        self._early: Frames | None = None  # the incoming request's answer, given early
        self._cut: object = None  # a request cut short: its answer is dropped, counted already
        self._fed: list[FrameBody] = []  # bodies given bytes (or ended) since last asked
        self._bodies: dict[object, FrameBody] = {}  # requests not answered: their bodies

    def begin(self, event: StreamStart, peer: object) -> tuple[Any, FrameBody]:
        """A request frame's header arrived: its request (the one arriving now) and body."""
        request = self.request_type(event.kind, event.id, b"", event.header, self.header)
        request.peer = peer
        body = FrameBody(event.length, self.hold)
        self.incoming, self.incoming_body, self._early = request, body, None
        self._bodies[request] = body
        return request, body

    def piece(self, event: StreamPiece) -> tuple[Any, Frames] | None:
        """Payload bytes of the arriving request; at its last, its early answer to send, if any."""
        body = self.incoming_body
        if body is None:  # cut short already
            return None
        body.push(event.data, event.last)
        if body.reader is not None and body not in self._fed:
            self._fed.append(body)
        if not event.last:
            return None
        request, early = self.incoming, self._early
        self.incoming = self.incoming_body = self._early = None
        return None if early is None else (request, early)

    def hold_early(self, request: object, frames: list[bytes], fatal: bool) -> bool:
        """Keep the answer to ``request`` if its frame is still arriving (its body is
        dropped: the rest of the frame is read and discarded); whether it was kept."""
        if request is not self.incoming or self.incoming_body is None:
            return False
        self._early = (frames, fatal)
        self.incoming_body.drop()
        return True

    def took_back(self, request: object) -> bool:
        """``request`` is answered or abandoned: drop what its body holds.  ``False`` if it
        was cut short (its answer is dropped, and was counted when it was cut)."""
        if request is self._cut:
            return False
        body = self._bodies.pop(request, None)
        if body is not None:
            body.drop()
        return True

    def cut(self) -> tuple[Any, bool] | None:
        """The connection ends mid-frame: truncate the arriving request's body.

        :return: the request, and whether it was answered already (early), or ``None``
            if no request was arriving.
        """
        request, body = self.incoming, self.incoming_body
        if request is None or body is None:
            return None
        answered = self._early is not None
        self.incoming = self.incoming_body = self._early = None
        self._bodies.pop(request, None)
        body.cut()
        self._fed.append(body)
        if not answered:
            self._cut = request
        return request, answered

    def close(self) -> None:
        """The connection is closed: every body not read whole is truncated."""
        for body in self._bodies.values():
            body.cut()
            self._fed.append(body)
        self._bodies.clear()

    def fed_bodies(self) -> list[FrameBody]:
        """The bodies given bytes (or ended) since last asked: their readers are to be woken."""
        fed = self._fed
        if not fed:
            return fed
        self._fed = []
        return fed

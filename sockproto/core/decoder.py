"""The incremental frame decoder: bytes in, events out, whatever the chunking.

:class:`FrameDecoder` turns a byte stream into :class:`Frame` events.  Its cost is
linear in the bytes fed: a complete frame inside one chunk is sliced out of it, and a
frame spread over several chunks is kept as zero-copy views and joined once when its
last byte arrives, so every payload byte is copied exactly once (Twisted's
``IntNStringReceiver`` re-joins its whole buffer on every read, twisted#6358).

A payload over ``max_payload`` is reported by an :class:`Oversized` event as soon as its
header is complete, and then discarded as it arrives, never buffered; decoding resumes
at the next frame (Netty's fail-fast discard mode).  A frame of a kind the caller does
not accept is skipped the same way (:class:`UnexpectedKind`).  A header that cannot be
valid (a wrong magic or version) ends the stream with :class:`Malformed`: a byte stream
cannot be resynchronised.

Frames of the kinds given as ``stream_kinds`` are not joined at all: each is reported
by a :class:`StreamStart` as soon as its header is complete, then its payload by
:class:`StreamPiece` events as it arrives (slices of what was fed, or what was fed
itself), the last one marked ``last`` (a streaming handler's body, issue 16).

Plain Python: no Twisted import (the sans-IO rule).
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any, ClassVar, Final, Generic, TypeAlias, TypeVar, cast

from .header import SPF1, FieldValue, HeaderSpec

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "DecoderFailed",
    "Event",
    "Frame",
    "FrameDecoder",
    "Malformed",
    "Oversized",
    "StreamPiece",
    "StreamStart",
    "UnexpectedKind",
]

DEFAULT_MAX_PAYLOAD: Final = 16 * 1024 * 1024
"""The default largest payload accepted: 16 MiB."""


class Frame:
    """One decoded frame.

    :ivar kind: the header's ``kind`` field, or ``None`` if it has none.
    :ivar id: the header's ``id`` field, or ``None`` if it has none.
    :ivar payload: the payload bytes.
    :ivar header: every header field's value, in wire order.
    :ivar spec: the header specification the frame was decoded with, or ``None``
        for a message that had no header (a raw datagram, a half-close request).
    """

    __slots__ = ("header", "id", "kind", "payload", "spec")

    #: The decoder may build instances with ``cls.__new__(cls)`` and the five
    #: assignments :meth:`__init__` makes, which saves a Python call per frame.  A
    #: subclass whose ``__init__`` must run for decoded frames sets this to False.
    decoder_skips_init: ClassVar[bool] = True

    def __init__(
        self,
        kind: int | None,
        id: int | None,
        payload: bytes,
        header: tuple[FieldValue, ...],
        spec: HeaderSpec | None,
    ) -> None:
        self.kind = kind
        self.id = id
        self.payload = payload
        self.header = header
        self.spec = spec

    @property
    def fields(self) -> dict[str, FieldValue]:
        """The decoded header fields by name (empty without a header)."""
        if self.spec is None:
            return {}
        return dict(zip(self.spec.names, self.header, strict=True))

    def __repr__(self) -> str:
        spec = self.spec.name if self.spec is not None else "raw"
        return (
            f"<{type(self).__name__} {spec} kind={self.kind} id={self.id} payload={len(self.payload)} bytes>"
        )


class _Skipped:
    """A frame whose payload the decoder discards instead of delivering."""

    __slots__ = ("header", "id", "kind", "length")

    def __init__(self, kind: int | None, id: int | None, length: int, header: tuple[FieldValue, ...]) -> None:
        self.kind = kind
        self.id = id
        self.length = length
        self.header = header

    def __repr__(self) -> str:
        return f"<{type(self).__name__} kind={self.kind} id={self.id} length={self.length}>"


class Oversized(_Skipped):
    """A header announced more than ``max_payload`` bytes; its payload is discarded."""

    __slots__ = ()


class UnexpectedKind(_Skipped):
    """A frame of a kind the decoder was told not to accept; its payload is discarded."""

    __slots__ = ()


class Malformed:
    """The stream carries a header that cannot be valid; nothing more can be decoded.

    :ivar reason: what was wrong, for logs and error messages.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"<Malformed {self.reason!r}>"


class StreamStart(_Skipped):
    """A streamed frame begins: its payload of ``length`` bytes follows as :class:`StreamPiece` events."""

    __slots__ = ()


class StreamPiece:
    """Some payload bytes of the streamed frame under way, in stream order.

    :ivar data: the bytes (a slice of what was fed, or what was fed itself; maybe empty
        for an empty payload).
    :ivar last: whether they end the frame.
    """

    __slots__ = ("data", "last")

    def __init__(self, data: bytes, last: bool) -> None:
        self.data = data
        self.last = last

    def __repr__(self) -> str:
        return f"<StreamPiece {len(self.data)} bytes{' last' if self.last else ''}>"


Event = Frame | Oversized | UnexpectedKind | Malformed | StreamStart | StreamPiece
"""Everything :meth:`FrameDecoder.feed` can return."""


class DecoderFailed(RuntimeError):
    """Bytes were fed to a decoder after it reported :class:`Malformed`."""


F = TypeVar("F")

_Events: TypeAlias = "list[F | Oversized | UnexpectedKind | Malformed | StreamStart | StreamPiece]"
"""What :meth:`FrameDecoder.feed` returns: frames of the decoder's type, and the other events."""


class FrameDecoder(Generic[F]):
    """Decode a stream of frames laid out by ``spec``.

    :param spec: the header layout.
    :param max_payload: the largest payload delivered; larger ones are reported by
        :class:`Oversized` and discarded.  Capped at what the length field can express.
    :param accept_kinds: if given (and the header has a kind), frames of other kinds are
        reported by :class:`UnexpectedKind` and discarded.  An oversized frame is
        reported as :class:`Oversized` whatever its kind.
    :param frame_type: the class built for each frame: :class:`Frame` or a subclass
        taking the same arguments; or ``bytes``, for a bare length prefix only, to get
        each frame as its payload bytes (the header holds nothing else), which spares an
        object per frame.
    :param stream_kinds: frames of these kinds (every frame, for a header without a
        kind field) are streamed (:class:`StreamStart`, then :class:`StreamPiece`
        events), never joined; ``None``: none is.
    :param max_streamed: the largest streamed payload; larger ones are reported by
        :class:`Oversized` and discarded (``None``: what the length field can express).
    :raises ValueError: for ``frame_type=bytes`` with a header that has other fields,
        or with ``stream_kinds``.
    """

    __slots__ = (
        "_bare",
        "_collecting",
        "_current",
        "_failed",
        "_frame_type",
        "_head",
        "_kinds",
        "_need",
        "_new",
        "_parts",
        "_streamed",
        "_streaming",
        "max_payload",
        "max_streamed",
        "spec",
    )

    def __init__(
        self,
        spec: HeaderSpec = SPF1,
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        accept_kinds: Container[int] | None = None,
        frame_type: type[F] = Frame,  # type: ignore[assignment]
        stream_kinds: Container[int] | None = None,
        max_streamed: int | None = None,
    ) -> None:
        if max_payload < 0:
            raise ValueError(f"max_payload must be >= 0, not {max_payload}")
        if max_streamed is not None and max_streamed < 0:
            raise ValueError(f"max_streamed must be >= 0 or None, not {max_streamed}")
        if stream_kinds is not None and frame_type is bytes:
            raise ValueError("streamed frames need a frame_type, not bytes")
        self.spec: Final = spec
        self.max_payload: Final = min(max_payload, spec.max_payload)
        self._kinds = accept_kinds if spec.has_kind else None
        self._bare = spec.pack_bare is not None
        if frame_type is bytes and not self._bare:
            raise ValueError(f"{spec.name}: frames as bare payloads need a header with no other field")
        self._frame_type = frame_type
        skip_init = getattr(frame_type, "decoder_skips_init", False)
        self._new = frame_type.__new__ if skip_init else None
        self._head = b""  # the start of an incomplete header (shorter than spec.size)
        self._need = 0  # bytes still owed to the current frame's payload
        self._collecting = False  # whether those bytes are kept (else discarded)
        # kept payload pieces, zero-copy; a shared empty tuple between frames (an idle
        # connection's decoder should cost little)
        self._parts: list[bytes | memoryview] | tuple[()] = ()
        self._current: tuple[int | None, int | None, tuple[FieldValue, ...]] = (None, None, ())
        self._failed: str | None = None
        # streaming: which frames are streamed (None: none; a header without a kind
        # streams all), their limit, and whether the frame under way is one
        self._streamed: Container[int | None] | None = None
        if stream_kinds is not None:
            self._streamed = stream_kinds if spec.has_kind else _ALL
        self.max_streamed: Final = (
            spec.max_payload if max_streamed is None else min(max_streamed, spec.max_payload)
        )
        self._streaming = False

    @property
    def buffered(self) -> int:
        """How many received bytes the decoder holds (an incomplete header or payload)."""
        return len(self._head) + sum(len(p) for p in self._parts)

    @property
    def idle(self) -> bool:
        """Whether the decoder sits between frames (no partial frame received)."""
        return not self._head and not self._need

    @property
    def needed(self) -> int:
        """How many more bytes the frame under way needs; 0 between frames.

        That is the rest of its header while the header is incomplete, then the rest of
        its payload (kept, or discarded after :class:`Oversized` or
        :class:`UnexpectedKind`).  Feeding exactly that many bytes returns at most one
        event, which lets a caller share a stream with other code frame by frame.
        """
        if self._head:
            return self.spec.size - len(self._head)
        return self._need

    def unconsumed(self) -> bytes:
        """Return the bytes fed that no event returned yet covers, as on the wire.

        That is the frame under way so far, its header included; ``b""`` between
        frames and while a payload is being discarded.  This lets a caller hand the rest
        of a stream to another decoder (one with another ``max_payload``, say) or to
        other code.  It copies them: keep it off per-read paths.
        """
        if self._head:
            return self._head
        if self._need and self._collecting:
            return b"".join([self.spec.struct.pack(*self._current[2]), *self._parts])
        return b""

    def feed(self, data: bytes) -> _Events[F]:
        """Consume ``data`` and return the events it completes, in stream order.

        :raises DecoderFailed: if an earlier call reported :class:`Malformed`.
        """
        if self._failed is not None:
            raise DecoderFailed(self._failed)
        if type(data) is not bytes:
            data = bytes(data)
        events: _Events[F] = []
        end = len(data)
        off = 0
        if self._need:
            off = self._continue(data, events)
            if off < 0:
                return events
        elif self._head:
            head = self._head
            take = self.spec.size - len(head)
            if end < take:
                self._hold(head + data, events)
                return events
            self._head = b""
            off = self._begin(self.spec.struct.unpack(head + data[:take]), data, take, end, events)
            if off < 0:
                return events
        if self._streamed is not None:  # no fast path: any frame may be streamed
            off = self._scan_each(data, off, end, events)
        elif not self._bare:
            off = self._scan_general(data, off, end, events)
        elif self._frame_type is bytes:
            off = self._scan_payloads(data, off, end, events)
        else:
            off = self._scan_bare(data, off, end, events)
        if 0 <= off < end:
            self._hold(data[off:], events)
        return events

    # The fast paths: whole, valid frames sliced straight out of ``data``; anything
    # else (an incomplete, oversized, unexpected or invalid frame) goes to _begin.
    # Each returns where the unparsed rest of ``data`` starts, or -1 if none is left.

    def _scan_payloads(self, data: bytes, off: int, end: int, events: list[Any]) -> int:
        """The fast path for a bare length prefix delivering payloads (``frame_type=bytes``)."""
        size = self.spec.size
        unpack_from = self.spec.struct.unpack_from
        maxp = self.max_payload
        append = events.append
        while end - off >= size:
            h = unpack_from(data, off)
            start = off + size
            stop = start + h[0]
            if stop > end or stop - start > maxp:
                off = self._begin(h, data, start, end, events)
                if off < 0:
                    return -1
                continue
            append(data[start:stop])
            off = stop
        return off

    def _scan_bare(self, data: bytes, off: int, end: int, events: list[Any]) -> int:
        """The fast path for a bare length prefix (``INT32``...): no other field to check."""
        spec = self.spec
        size = spec.size
        unpack_from = spec.struct.unpack_from
        maxp = self.max_payload
        ftype: Any = self._frame_type
        new: Any = self._new
        append = events.append
        while end - off >= size:
            h = unpack_from(data, off)
            start = off + size
            stop = start + h[0]
            if stop > end or stop - start > maxp:
                off = self._begin(h, data, start, end, events)
                if off < 0:
                    return -1
                continue
            if new is None:
                append(ftype(None, None, data[start:stop], h, spec))
            else:  # what Frame.__init__ does, without the call
                frame = new(ftype)
                frame.kind = frame.id = None
                frame.payload = data[start:stop]
                frame.header = h
                frame.spec = spec
                append(frame)
            off = stop
        return off

    def _scan_general(self, data: bytes, off: int, end: int, events: list[Any]) -> int:
        """The fast path for any header: constants, kind filter and length adjustment."""
        spec = self.spec
        size = spec.size
        unpack_from = spec.struct.unpack_from
        li, ki, ii, adj = spec.length_index, spec.kind_index, spec.id_index, spec.length_offset
        maxp = self.max_payload
        kinds = self._kinds
        const_get, const_val = spec.constant_getter, spec.constant_value
        ftype: Any = self._frame_type
        new: Any = self._new
        append = events.append
        while end - off >= size:
            h = unpack_from(data, off)
            start = off + size
            n = h[li] - adj
            stop = start + n
            kind = h[ki] if ki >= 0 else None
            if (
                stop > end
                or n > maxp
                or n < 0
                or (const_get is not None and const_get(h) != const_val)
                or (kinds is not None and kind not in kinds)
            ):
                off = self._begin(h, data, start, end, events)
                if off < 0:
                    return -1
                continue
            if new is None:
                append(ftype(kind, h[ii] if ii >= 0 else None, data[start:stop], h, spec))
            else:  # what Frame.__init__ does, without the call
                frame = new(ftype)
                frame.kind = kind
                frame.id = h[ii] if ii >= 0 else None
                frame.payload = data[start:stop]
                frame.header = h
                frame.spec = spec
                append(frame)
            off = stop
        return off

    def _scan_each(self, data: bytes, off: int, end: int, events: list[Any]) -> int:
        """The loop of a streaming decoder: each header through :meth:`_begin`."""
        size = self.spec.size
        unpack_from = self.spec.struct.unpack_from
        while end - off >= size:
            off = self._begin(unpack_from(data, off), data, off + size, end, events)
            if off < 0:
                return -1
        return off

    def _begin(
        self,
        h: tuple[FieldValue, ...],
        data: bytes,
        start: int,
        end: int,
        events: _Events[F],
    ) -> int:
        """Handle header ``h`` whose payload starts at ``data[start]``, off the fast path.

        :return: the offset to go on decoding from, or -1 if ``data`` is used up or
            the stream failed.
        """
        spec = self.spec
        reason = spec.check(h)
        if reason is not None:
            self._fail(reason, events)
            return -1
        length = h[spec.length_index]
        assert isinstance(length, int)
        n = length - spec.length_offset
        kind = h[spec.kind_index] if spec.kind_index >= 0 else None
        ident = h[spec.id_index] if spec.id_index >= 0 else None
        assert kind is None or isinstance(kind, int)
        assert ident is None or isinstance(ident, int)
        streamed = self._streamed
        if streamed is not None and kind in streamed:
            return self._stream(StreamStart(kind, ident, n, h), data, start, end, events)
        if n > self.max_payload:
            events.append(Oversized(kind, ident, n, h))
            return self._skip(start + n, end)
        if self._kinds is not None and kind not in self._kinds:
            events.append(UnexpectedKind(kind, ident, n, h))
            return self._skip(start + n, end)
        stop = start + n
        if stop <= end:
            events.append(self._build(kind, ident, data[start:stop], h))
            return stop
        self._parts = [memoryview(data)[start:end]] if start < end else []
        self._current = (kind, ident, h)
        self._need = stop - end
        self._collecting = True
        return -1

    def _stream(self, started: StreamStart, data: bytes, start: int, end: int, events: list[Any]) -> int:
        """Begin streamed frame ``started``: report it and what ``data`` holds of its payload."""
        n = started.length
        if n > self.max_streamed:
            events.append(Oversized(started.kind, started.id, n, started.header))
            return self._skip(start + n, end)
        events.append(started)
        stop = start + n
        if stop <= end:
            events.append(StreamPiece(data[start:stop], True))
            return stop
        if start < end:
            events.append(StreamPiece(data[start:] if start else data, False))
        self._need = stop - end
        self._collecting = False
        self._streaming = True
        return -1

    def _build(self, kind: int | None, ident: int | None, payload: bytes, h: tuple[FieldValue, ...]) -> Any:
        """One frame event, off the fast paths."""
        if self._frame_type is bytes:
            return payload
        return self._frame_type(kind, ident, payload, h, self.spec)  # type: ignore[call-arg]

    def _skip(self, stop: int, end: int) -> int:
        if stop <= end:
            return stop
        self._need = stop - end
        self._collecting = False
        return -1

    def _continue(
        self,
        data: bytes,
        events: _Events[F],
    ) -> int:
        """Give ``data`` to the frame under way; return where the next frame starts, or -1."""
        need = self._need
        if self._streaming:  # the pieces of a streamed frame: handed on, never kept
            if len(data) < need:
                self._need = need - len(data)
                events.append(StreamPiece(data, False))
                return -1
            self._need = 0
            self._streaming = False
            events.append(StreamPiece(data if need == len(data) else data[:need], True))
            return need
        if len(data) < need:
            if self._collecting:
                cast("list[bytes | memoryview]", self._parts).append(data)
            self._need = need - len(data)
            return -1
        self._need = 0
        if self._collecting:
            parts = cast("list[bytes | memoryview]", self._parts)
            parts.append(memoryview(data)[:need])
            self._parts = ()
            kind, ident, h = self._current
            self._current = (None, None, ())
            events.append(self._build(kind, ident, b"".join(parts), h))
        return need

    def _hold(
        self,
        head: bytes,
        events: _Events[F],
    ) -> None:
        """Keep the start of a header, failing at once if its constant bytes are wrong."""
        reason = self.spec.check_start(head)
        if reason is not None:
            self._fail(reason, events)
            return
        self._head = head

    def _fail(
        self,
        reason: str,
        events: _Events[F],
    ) -> None:
        self._failed = reason
        self._head = b""
        self._parts = ()
        self._need = 0
        self._streaming = False
        events.append(Malformed(reason))


class _All:
    """Contains every kind: a header without a kind field streams every frame."""

    def __contains__(self, kind: object) -> bool:
        return True


_ALL: Final = _All()

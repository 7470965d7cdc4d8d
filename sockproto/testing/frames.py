"""Build frames and read answers back, for tests that speak the wire format directly."""

from __future__ import annotations

from typing import NamedTuple

from ..core.decoder import Frame, FrameDecoder, Malformed, Oversized, UnexpectedKind
from ..core.header import SPF1, HeaderSpec
from ..core.spf1 import ErrorCode, Kind, decode_error, encode_error

__all__ = [
    "AnswerFrame",
    "build_error",
    "build_frame",
    "build_ping",
    "build_request",
    "parse_error",
    "parse_frames",
]


class AnswerFrame(NamedTuple):
    """One decoded frame as a plain tuple: ``(kind, id, payload)``.

    ``kind`` is a :class:`~sockproto.core.spf1.Kind` when the header has a kind field
    and the value is a known kind; ``kind`` and ``id`` are ``None`` for headers without
    those fields (``INT32``...).
    """

    kind: Kind | int | None
    id: int | None
    payload: bytes


def build_frame(
    payload: bytes = b"", *, kind: int = Kind.REQUEST, id: int = 1, header: HeaderSpec = SPF1
) -> bytes:
    """Return one whole frame: the header announcing ``payload``, then ``payload``.

    ``kind`` and ``id`` are ignored for a header without those fields.

    :raises ~sockproto.core.header.PayloadTooLarge: if the length field cannot say
        ``len(payload)``.
    """
    fields: dict[str, int] = {}
    if header.has_kind:
        fields["kind"] = int(kind)
    if header.has_id:
        fields["id"] = id
    return header.encode(payload, **fields)


def build_request(payload: bytes = b"", id: int = 1, *, header: HeaderSpec = SPF1) -> bytes:
    """Return a REQUEST frame (the only kind of frame for headers without a kind)."""
    return build_frame(payload, kind=Kind.REQUEST, id=id, header=header)


def build_ping(payload: bytes = b"", id: int = 1) -> bytes:
    """Return an SPF/1 PING frame."""
    return build_frame(payload, kind=Kind.PING, id=id)


def build_error(code: int, message: str, id: int = 1) -> bytes:
    """Return an SPF/1 ERROR frame, as a server sends it (to test clients)."""
    return build_frame(encode_error(code, message), kind=Kind.ERROR, id=id)


def parse_frames(
    data: bytes, *, header: HeaderSpec = SPF1, max_payload: int | None = None
) -> list[AnswerFrame]:
    """Split ``data``, a byte string holding whole frames, into :class:`AnswerFrame` tuples.

    Every kind is accepted (answers and requests alike).

    :param max_payload: the largest payload accepted; any size the header can say by
        default.
    :raises ValueError: if ``data`` is not a sequence of valid, whole frames: a wrong
        magic or version, an oversized frame, or bytes left over after the last whole
        frame (an incomplete frame).
    """
    decoder: FrameDecoder[Frame] = FrameDecoder(
        header, max_payload=header.max_payload if max_payload is None else max_payload
    )
    frames: list[AnswerFrame] = []
    for event in decoder.feed(data):
        if isinstance(event, Malformed):
            raise ValueError(f"not a valid {header.name} frame after {len(frames)} frames: {event.reason}")
        if isinstance(event, (Oversized, UnexpectedKind)):
            raise ValueError(f"frame {len(frames)} announces {event.length} bytes, over the limit")
        assert isinstance(event, Frame)  # no stream_kinds: no streamed events
        frames.append(AnswerFrame(_kind(event.kind), event.id, event.payload))
    if not decoder.idle:
        raise ValueError(
            f"{header.name}: {len(decoder.unconsumed())} bytes after the last whole frame "
            f"(frame {len(frames)} is incomplete)"
        )
    return frames


def parse_error(payload: bytes) -> tuple[ErrorCode | int, str]:
    """Split an ERROR frame's payload into its code (an :class:`ErrorCode` if known) and message.

    :raises ValueError: if the payload is too short to hold a code.
    """
    code, message = decode_error(payload)
    try:
        return ErrorCode(code), message
    except ValueError:
        return code, message


def _kind(kind: int | None) -> Kind | int | None:
    if kind is None:
        return None
    try:
        return Kind(kind)
    except ValueError:
        return kind

"""SPF/1 over UDP: one datagram is one whole frame, checked, parsed or dropped.

A stream decoder waits for more bytes; a datagram has no "more": it arrives whole or
not at all, so its header's length field must equal the bytes that follow it exactly.
:func:`parse_datagram` returns the frame, or the :class:`DropReason` for which the
datagram must be dropped *without any reply* (answering garbage on UDP makes a
reflector).  The ``encode_*`` functions build the datagrams sent back.

Plain Python: no Twisted import (the sans-IO rule).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Container
from enum import Enum
from typing import Final, Literal, TypeVar

from .decoder import Frame
from .header import SPF1, FieldValue, HeaderSpec
from .spf1 import ErrorCode, Kind, encode_error

__all__ = [
    "CLIENT_KINDS",
    "COOKIE_PREFIX",
    "HEADER_SIZE",
    "MAX_UDP_PAYLOAD",
    "MIN_DATAGRAM",
    "MODES",
    "READ_SIZE",
    "SERVER_KINDS",
    "DropReason",
    "Mode",
    "encode_datagram",
    "encode_error_datagram",
    "parse_datagram",
]

MAX_UDP_PAYLOAD: Final = 65507
"""The largest UDP payload over IPv4: 65535 - 20 (IPv4 header) - 8 (UDP header)."""

READ_SIZE: Final = 65536
"""Bytes asked of each ``recvfrom``: more than any UDP payload, so none is ever cut."""

HEADER_SIZE: Final = SPF1.size
"""The SPF/1 header: 12 bytes."""

MIN_DATAGRAM: Final = 64
"""The smallest datagram limit a service accepts: room for a header and a short ERROR."""

SERVER_KINDS: Final = frozenset((int(Kind.REQUEST), int(Kind.PING)))
"""The kinds a server answers."""

CLIENT_KINDS: Final = frozenset((int(Kind.RESPONSE), int(Kind.ERROR), int(Kind.PONG)))
"""The kinds a client accepts."""

Mode = Literal["spf1", "raw"]
"""A datagram service's wire mode: SPF/1 datagrams, or bare payloads."""

MODES: Final[tuple[Mode, ...]] = ("spf1", "raw")
"""The wire modes."""

COOKIE_PREFIX: Final = b"cookie="
"""How an amplification guard's cookie starts, in its ERROR 2 and in the PING that returns it."""

_HEADER: Final = struct.Struct(">2sBBII")
_PREFIX: Final = b"SP\x01"  # magic and version: what makes a datagram SPF/1 at all
assert SPF1.struct.format == _HEADER.format and SPF1.size == _HEADER.size


class DropReason(Enum):
    """Why a datagram got no reply.  Each value names a counter of the service's stats.

    :func:`parse_datagram` returns the first five; the datagram service counts the
    others itself.
    """

    TOO_SHORT = "too_short"
    """Shorter than an SPF/1 header."""
    TRUNCATED = "truncated"
    """The length field announces more bytes than follow the header."""
    TRAILING = "trailing"
    """More bytes follow the header than its length field announces."""
    FOREIGN = "foreign"
    """Not SPF/1 at all: a wrong magic or version."""
    UNEXPECTED_KIND = "unexpected_kind"
    """A valid frame of a kind the receiver does not take (a RESPONSE sent to a server)."""
    IN_PROGRESS = "in_progress"
    """A retransmission arrived while the handler for its (peer, id) was still running."""
    OVERLOADED = "overloaded"
    """Too many handlers were already running."""
    ANSWER_TOO_LARGE = "answer_too_large"
    """Raw mode: the answer does not fit in one datagram."""
    HANDLER_FAILED = "handler_failed"
    """Raw mode: the handler raised, or did not return bytes."""
    SEND_FAILED = "send_failed"
    """The reply could not be sent (a full socket buffer, no route...)."""
    RATE_LIMITED = "rate_limited"
    """Its source was over the per-source rate limit."""
    AMPLIFICATION = "amplification"
    """Raw mode: the answer was over the amplification limit for an unverified source."""

    def __str__(self) -> str:
        return self.value.replace("_", " ")


F = TypeVar("F")
FrameFactory = Callable[[int, int, bytes, tuple[FieldValue, ...], HeaderSpec], F]


def parse_datagram(
    data: bytes,
    accept: Container[int] = SERVER_KINDS,
    frame_type: FrameFactory[F] = Frame,  # type: ignore[assignment]
) -> F | DropReason:
    """Parse one SPF/1 datagram.

    The checks come in this order: :attr:`~DropReason.TOO_SHORT`,
    :attr:`~DropReason.FOREIGN`, :attr:`~DropReason.TRUNCATED` or
    :attr:`~DropReason.TRAILING`, then :attr:`~DropReason.UNEXPECTED_KIND`.

    :param data: the datagram, exactly as received.
    :param accept: the kinds wanted (:data:`SERVER_KINDS` by default).
    :param frame_type: builds the frame from ``(kind, id, payload, header, spec)``,
        like :class:`~sockproto.core.decoder.FrameDecoder`'s.
    :return: the frame, or why the datagram must be dropped.
    """
    if len(data) < HEADER_SIZE:
        return DropReason.TOO_SHORT
    if data[:3] != _PREFIX:
        return DropReason.FOREIGN
    header = _HEADER.unpack_from(data)
    length = header[4]
    follows = len(data) - HEADER_SIZE
    if length != follows:
        return DropReason.TRUNCATED if length > follows else DropReason.TRAILING
    kind = header[2]
    if kind not in accept:
        return DropReason.UNEXPECTED_KIND
    return frame_type(kind, header[3], data[HEADER_SIZE:], header, SPF1)


def encode_datagram(kind: int, ident: int, payload: bytes) -> bytes:
    """Return one SPF/1 datagram: the header for ``payload``, then ``payload``.

    The caller checks the size against its datagram limit.
    """
    return _HEADER.pack(b"SP", 1, kind, ident, len(payload)) + payload


def encode_error_datagram(ident: int, code: ErrorCode, message: str, max_datagram: int) -> bytes:
    """Return an ERROR datagram, its message cut so that it fits in ``max_datagram`` bytes.

    :raises ValueError: if ``max_datagram`` leaves no room for the error code.
    """
    room = max_datagram - HEADER_SIZE - 2
    if room < 0:
        raise ValueError(f"a {max_datagram}-byte datagram cannot carry an ERROR")
    payload = encode_error(code, message)
    if len(payload) > room + 2:
        cut = payload[2 : 2 + room].decode("utf-8", "ignore").encode("utf-8")
        payload = payload[:2] + cut
    return encode_datagram(Kind.ERROR, ident, payload)

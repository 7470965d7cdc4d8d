"""SPF/1 kinds, error codes and the ERROR payload.

Plain Python: no Twisted import (the sans-IO rule).
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Final

__all__ = [
    "MAX_ERROR_MESSAGE",
    "ErrorCode",
    "Kind",
    "decode_error",
    "encode_error",
]

MAX_ERROR_MESSAGE: Final = 1024
"""Longest ERROR message sent, in UTF-8 bytes; longer ones are cut."""

_CODE: Final = struct.Struct("!H")


class Kind(IntEnum):
    """The ``kind`` field of an SPF/1 header."""

    REQUEST = 1
    RESPONSE = 2
    ERROR = 3
    PING = 4
    PONG = 5


class ErrorCode(IntEnum):
    """The code that opens an ERROR payload."""

    PROTOCOL_ERROR = 1
    TOO_LARGE = 2
    UNEXPECTED_KIND = 3
    HANDLER_FAILED = 4
    OVERLOADED = 5
    TIMEOUT = 6


def encode_error(code: int, message: str) -> bytes:
    """Return an ERROR payload: ``code`` as uint16, then ``message`` in UTF-8.

    The message is cut to :data:`MAX_ERROR_MESSAGE` bytes on a character boundary;
    what UTF-8 cannot encode (a lone surrogate) becomes ``?``.
    """
    raw = message.encode("utf-8", "replace")  # a lone surrogate becomes "?"
    if len(raw) > MAX_ERROR_MESSAGE:
        raw = raw[:MAX_ERROR_MESSAGE].decode("utf-8", "ignore").encode("utf-8")
    return _CODE.pack(code) + raw


def decode_error(payload: bytes) -> tuple[int, str]:
    """Split an ERROR payload into its code and message.

    Undecodable UTF-8 is replaced rather than refused: the code is what matters.

    :raises ValueError: if the payload is shorter than the 2-byte code.
    """
    if len(payload) < _CODE.size:
        raise ValueError(f"ERROR payload of {len(payload)} bytes has no error code")
    (code,) = _CODE.unpack_from(payload)
    return code, payload[_CODE.size :].decode("utf-8", "replace")

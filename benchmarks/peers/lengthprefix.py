"""The parser one writes by hand: a ``bytearray`` buffer and ``struct``.

Linear (``bytearray`` grows in amortised constant time and drops consumed bytes from
its front cheaply), unlike Twisted's ``IntNStringReceiver``, which re-joins its whole
buffer on every read.  The asyncio and uvloop protocol peers use it, and so does the
parse-only workload, as "simple".
"""

from __future__ import annotations

import struct

_UNPACK_FROM = struct.Struct("!I").unpack_from


class LengthPrefixParser:
    """Split a stream of 4-byte big-endian length-prefixed frames into payloads."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the payloads it completes."""
        buffer = self.buffer
        buffer += data
        end = len(buffer)
        offset = 0
        frames = []
        while end - offset >= 4:
            (length,) = _UNPACK_FROM(buffer, offset)
            stop = offset + 4 + length
            if stop > end:
                break
            frames.append(bytes(buffer[offset + 4 : stop]))
            offset = stop
        if offset:
            del buffer[:offset]
        return frames

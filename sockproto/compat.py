"""Drop-in linear replacements for Twisted's ``Int8/Int16/Int32StringReceiver``.

Twisted's :class:`twisted.protocols.basic.IntNStringReceiver` joins its whole pending
buffer to every read (``_unprocessed + data``), so a string arriving in ``k`` reads
costs time quadratic in its size (twisted#6358): a 64 MiB string in 64 KiB reads takes
seconds.  The classes here keep the same public behaviour (``stringReceived``,
``sendString``, ``MAX_LENGTH`` and ``lengthLimitExceeded``, ``structFormat`` and
``prefixLength``, the settable ``recvd`` attribute, pausing) in linear time::

    from sockproto.compat import Int32StringReceiver  # was: twisted.protocols.basic

Each read is parsed where it lies: whole strings are sliced out of it.  The start of a
string running past its end is joined to the next read while short (16 KiB); a longer
one waits until all its bytes have arrived, then its pieces are joined once.  Either
way the cost per read is bounded: linear time overall.  Between strings the
loop re-reads what Twisted's re-reads (``paused``, ``recvd``, ``MAX_LENGTH``), and
``recvd`` is only materialised when it is read.  See :doc:`/migration` for the few
documented differences.
"""

from __future__ import annotations

import re
import sys
from collections import deque
from collections.abc import Callable
from functools import lru_cache
from itertools import islice
from struct import calcsize, pack
from typing import Any, Final, Literal

from twisted.internet.protocol import Protocol
from twisted.protocols.basic import StringTooLongError

from .core.header import INT16, INT32, HeaderSpec

__all__ = [
    "INT8",
    "Int8StringReceiver",
    "Int16StringReceiver",
    "Int32StringReceiver",
    "IntNStringReceiver",
    "StringTooLongError",
    "spec_for_struct_format",
]

INT8: Final = HeaderSpec("int8", "length:B")
"""A bare 1-byte length (Twisted ``Int8StringReceiver``)."""

_FORMAT_RE: Final = re.compile(r"([@=<>!]?)([BHILQ])\Z")
_ORDERS: Final[dict[str, Literal["big", "little"]]] = {
    "!": "big",
    ">": "big",
    "<": "little",
    "=": sys.byteorder,
    "@": sys.byteorder,
    "": sys.byteorder,
}
_UNSIGNED_BY_SIZE: Final = {1: "B", 2: "H", 4: "I", 8: "Q"}
_KNOWN: Final = {"!I": INT32, ">I": INT32, "!H": INT16, ">H": INT16, "!B": INT8, ">B": INT8}


@lru_cache(maxsize=64)
def spec_for_struct_format(struct_format: str) -> HeaderSpec:
    """Return the header spec of a length prefix given as a :mod:`struct` format.

    :param struct_format: one unsigned integer, with or without a byte-order
        character: ``"!I"``, ``"<H"``, ``"!B"``...
    :raises ValueError: for any other format (a signed length cannot frame a string).
    """
    known = _KNOWN.get(struct_format)
    if known is not None:
        return known
    match = _FORMAT_RE.match(struct_format)
    if match is None:
        raise ValueError(f"structFormat {struct_format!r} is not one unsigned integer ('!I', '<H'...)")
    code = _UNSIGNED_BY_SIZE[calcsize(struct_format)]
    return HeaderSpec(f"prefix{struct_format}", [("length", code)], byte_order=_ORDERS[match.group(1)])


class IntNStringReceiver(Protocol):
    """Receive and send strings prefixed by their length, as Twisted's class does.

    Subclasses set :attr:`structFormat` and :attr:`prefixLength` (or use one of the
    three classes below) and override :meth:`stringReceived`.  There is no
    ``__init__`` to call: the receive state is set up by the first read.

    :cvar MAX_LENGTH: a longer string is refused through :meth:`lengthLimitExceeded`
        as soon as its prefix arrives, never buffered.  It can be changed at any time,
        on the class or the instance, and applies from the next prefix.
    :cvar structFormat: the :mod:`struct` format of the prefix: one unsigned integer.
    :cvar prefixLength: the prefix size, ``struct.calcsize(structFormat)``.
    :ivar paused: set by :meth:`pauseProducing`: no string is delivered while true.
    """

    MAX_LENGTH: int = 99999
    structFormat: str
    prefixLength: int
    paused: bool = False

    # The receive state: class defaults, as subclasses need not call __init__.
    _fmt: str = ""  # the structFormat _size and _unpack_from follow; "" until set up
    _size: int
    _unpack_from: Callable[[bytes, int], tuple[int]]
    _reads: deque[bytes]  # the reads not parsed yet, the first one from _off on
    _off: int = 0
    _queued: int = 0  # the bytes of the reads after the first
    _busy = False  # in the receive loop: dataReceived called back only queues
    _refused = False  # lengthLimitExceeded was called: nothing more is parsed
    #: The rest of a read, up to this long, is joined to the next read (cheapest for
    #: short strings); past it, a string waits until all its bytes have arrived and is
    #: joined once.  A join copies at most this plus one read: the cost per read is
    #: bounded, the total linear (twisted#6358 joins everything held, every read).
    _join_limit = 16 * 1024

    # -- the Twisted API ----------------------------------------------------------

    def stringReceived(self, string: bytes) -> None:
        """Override this: called with each complete string, its prefix removed."""
        raise NotImplementedError

    def lengthLimitExceeded(self, length: int) -> None:
        """Called with a prefix over :attr:`MAX_LENGTH`; disconnects by default.

        Nothing is parsed afterwards: later bytes are dropped, not buffered.
        """
        self._transport().loseConnection()

    def sendString(self, string: bytes) -> None:
        """Send ``string`` prefixed with its length.

        :raises StringTooLongError: (an :class:`AssertionError`) if the prefix cannot
            express its length.
        """
        if len(string) >= 2 ** (8 * self.prefixLength):
            limit = 2 ** (8 * self.prefixLength)
            raise StringTooLongError(f"Try to send {len(string)} bytes whereas maximum is {limit}")
        self._transport().write(pack(self.structFormat, len(string)) + string)

    def pauseProducing(self) -> None:
        """Stop delivering strings, and pause the transport."""
        self.paused = True
        self._transport().pauseProducing()

    def resumeProducing(self) -> None:
        """Resume the transport, and deliver the strings already received."""
        self.paused = False
        self._transport().resumeProducing()
        self.dataReceived(b"")

    def stopProducing(self) -> None:
        """Stop delivering strings, and stop the transport."""
        self.paused = True
        self._transport().stopProducing()

    @property
    def recvd(self) -> bytes:
        """The bytes received and not parsed yet (a copy, made when read).

        In :meth:`stringReceived` they start after the string delivered; in
        :meth:`lengthLimitExceeded`, with the refused prefix.  Assigning them replaces
        them: parsing goes on from the bytes assigned (after a refusal, it does not).
        """
        if not self._fmt:
            return b""
        reads = self._reads
        return b"".join([memoryview(reads[0])[self._off :], *islice(reads, 1, None)]) if reads else b""

    @recvd.setter
    def recvd(self, value: bytes) -> None:
        if not self._fmt:
            self._set_up()
        self._reads.clear()  # in place: the running loop sees the change
        if value:
            self._reads.append(bytes(value))
        self._off = self._queued = 0

    # -- receiving ----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Deliver every string ``data`` completes, unless paused.

        Called from a callback, it only queues ``data``: the running loop parses it
        after the current string (Twisted's class would re-parse its buffer).
        """
        if self._refused:
            return
        if self._fmt != self.structFormat:
            self._set_up()
        reads = self._reads
        if not (reads or self._busy or self.paused) and type(data) is bytes and len(data) >= self._size:
            # Fast path: a read that is exactly one string (request/response traffic)
            # skips the loop: 1.65x to 1.75x the strings/s without it, for 16 to
            # 1000-byte strings one per read (bench_intn.py's small() reads, this class
            # against itself with the branch off, best of 5 rounds of 100,000 strings).
            (length,) = self._unpack_from(data, 0)
            if self._size + length == len(data) and length <= self.MAX_LENGTH:
                self._busy = True
                try:
                    self.stringReceived(data[self._size :])
                finally:
                    self._busy = False
                data = b""  # parse what the callback queued or assigned to recvd, if any
        if data:
            if reads:
                self._queued += len(data)
            reads.append(data if type(data) is bytes else bytes(data))
        if reads and not self._busy:
            self._busy = True
            try:
                self._parse()
            finally:
                self._busy = False

    def _parse(self) -> None:
        """The receive loop: deliver the strings the reads hold, in order, until paused.

        ``MAX_LENGTH``, ``paused`` and ``recvd`` are read again after every callback, as
        Twisted's loop reads them.  ``self._off`` is past a string before it is
        delivered: a callback that raises leaves nothing to deliver twice.
        """
        reads = self._reads
        size, unpack_from, join_limit = self._size, self._unpack_from, self._join_limit
        while reads and not self.paused:
            data, off = reads[0], self._off
            rest = len(data) - off
            if rest and self._queued and (rest < size or rest <= join_limit):
                # Fast path: a short rest is joined to the next read, as Twisted does:
                # 1.1x (100 bytes) to 1.5x (1000 bytes) the strings/s of the long-string
                # path alone (_join_limit = 0) in 1460-byte reads, 1.4x for 1000-byte
                # strings in 64 KiB reads (measured as the fast path above).
                reads.popleft()
                self._queued -= len(reads[0])
                data = reads[0] = data[off:] + reads[0] if off else data + reads[0]
                off = self._off = 0
            end, length = len(data), 0
            while end - off >= size:  # the whole strings of this read: sliced out of it
                (length,) = unpack_from(data, off)
                if length > self.MAX_LENGTH:
                    self._refuse(length)
                    return
                start = off + size
                stop = start + length
                if stop > end:
                    break
                self._off = off = stop
                self.stringReceived(data[start:stop])
                if self.paused or self._off != off:  # paused, or recvd assigned
                    break
            if self.paused or self._off != off:
                continue  # paused: stop; recvd assigned: parse it
            if off == end:  # this read is used up
                reads.popleft()
                self._off = 0
                if reads:
                    self._queued -= len(reads[0])
                continue
            if not self._queued:
                return  # the next string runs past this read: wait for the next one
            if end - off < size or end - off <= join_limit:
                continue  # a short rest: joined to the next read, above
            if end - off + self._queued < size + length:
                return  # a long string: wait until all its bytes have arrived
            # All here: its pieces are joined once, however many reads they are.
            self._off = off + size
            self.stringReceived(self._take(length))

    def _take(self, n: int) -> bytes:
        """Remove the next ``n`` bytes (all arrived) from the reads, and join them once."""
        reads, off = self._reads, self._off
        parts: list[bytes | memoryview] = []
        while n:
            first = reads[0]
            if len(first) - off > n:
                parts.append(memoryview(first)[off : off + n])
                off += n
                break
            parts.append(memoryview(first)[off:])
            n -= len(first) - off
            reads.popleft()
            off = 0
            self._queued -= len(reads[0]) if reads else 0
        self._off = off
        return b"".join(parts)

    def _refuse(self, length: int) -> None:
        """Stop parsing for good (``recvd`` keeps the refused prefix on), and report it."""
        self._refused = True
        self.lengthLimitExceeded(length)

    def _set_up(self) -> None:
        """Set the receive state up on first use, and follow a changed structFormat.

        :raises ValueError: for a ``structFormat`` that is not one unsigned integer, a
            ``prefixLength`` that is not its size, or a ``MAX_LENGTH`` below 0.
        """
        fmt = self.structFormat
        spec = spec_for_struct_format(fmt)
        if self.prefixLength != spec.size:
            raise ValueError(f"prefixLength {self.prefixLength} is not calcsize({fmt!r})")
        if not self._fmt:
            if not self.MAX_LENGTH >= 0:
                raise ValueError(f"MAX_LENGTH must be a number >= 0, not {self.MAX_LENGTH!r}")
            self._reads = deque()
        self._fmt, self._size, self._unpack_from = fmt, spec.size, spec.struct.unpack_from

    def _transport(self) -> Any:
        """The transport, untyped: producer methods and test doubles alike."""
        return self.transport


class Int32StringReceiver(IntNStringReceiver):
    """Strings prefixed by their length in 4 bytes, big-endian (network order)."""

    structFormat = "!I"
    prefixLength = calcsize(structFormat)


class Int16StringReceiver(IntNStringReceiver):
    """Strings prefixed by their length in 2 bytes, big-endian (network order)."""

    structFormat = "!H"
    prefixLength = calcsize(structFormat)


class Int8StringReceiver(IntNStringReceiver):
    """Strings prefixed by their length in 1 byte."""

    structFormat = "!B"
    prefixLength = calcsize(structFormat)

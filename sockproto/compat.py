"""Drop-in linear replacements for Twisted's ``Int8/Int16/Int32StringReceiver``.

Twisted's :class:`twisted.protocols.basic.IntNStringReceiver` joins its whole pending
buffer to every read (``_unprocessed + data``), so a string arriving in ``k`` reads
costs time quadratic in its size (twisted#6358): a 64 MiB string in 64 KiB reads takes
seconds.  The classes here keep the same public behaviour (``stringReceived``,
``sendString``, ``MAX_LENGTH`` and ``lengthLimitExceeded``, ``structFormat`` and
``prefixLength``, the settable ``recvd`` attribute, pausing) in linear time::

    from sockproto.compat import Int32StringReceiver  # was: twisted.protocols.basic

Each read is parsed where it lies: whole strings are sliced out of it.  A string
running past its end is joined to the next read while that stays short (16 KiB, where
joining is the cheapest thing Python does); a longer one goes to a
:class:`~sockproto.core.decoder.FrameDecoder`, which keeps the pieces as zero-copy
views and joins them once, when the last one arrives.  Between strings the loop
re-reads what Twisted's re-reads (``paused``, ``recvd``, ``MAX_LENGTH``), and
``recvd`` is only materialised when it is read.  See :doc:`/migration` for the few
documented differences.
"""

from __future__ import annotations

import re
import sys
from collections import deque
from collections.abc import Callable
from functools import lru_cache
from struct import calcsize, pack
from typing import Any, Final, Literal

from twisted.internet.protocol import Protocol
from twisted.protocols.basic import StringTooLongError

from .core.decoder import Frame, FrameDecoder, Oversized
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
    _decoder: FrameDecoder[Frame] | None = None  # holds the string running past a read
    _fmt: str = ""  # the structFormat and MAX_LENGTH it was built for
    _max: object = None
    _data: bytes = b""  # the read being parsed...
    _off: int = 0  # ...from there on
    _held: bytes = b""  # the start of a short string, to join to the next read
    _held_needs: int = 0  # bytes it lacks (or its prefix lacks, while incomplete)
    _size: int  # the prefix size and parser, from the decoder's spec
    _unpack_from: Callable[[bytes, int], tuple[int]]
    #: A string straddling reads is joined to the next read (Twisted's way, cheapest
    #: for short strings) while that makes at most this many bytes; past that, the
    #: decoder holds it, which copies each byte once: the cost per read stays bounded.
    _join_limit = 16 * 1024
    _inbox: deque[bytes]  # reads not parsed yet, queued while paused or busy
    _replacement: bytes | None = None  # recvd as assigned by a callback, to apply
    _refused: bytes | None = None  # recvd when lengthLimitExceeded was called
    _busy = False  # in the parsing loop: dataReceived then only queues
    _clean = False  # nothing queued nor unparsed, no callback running: the fast paths

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
        them: parsing goes on from the bytes assigned.
        """
        if self._replacement is not None:
            return self._replacement
        if self._refused is not None:
            return self._refused
        if self._decoder is None:
            return b""
        return b"".join([self._unparsed(), *self._inbox])

    @recvd.setter
    def recvd(self, value: bytes) -> None:
        if self._refused is not None:
            self._refused = bytes(value)  # nothing is parsed after a refusal
        elif self._busy:
            self._replacement = bytes(value)  # applied when the callback returns
        else:
            self._restart(bytes(value))

    # -- receiving ----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Deliver every string ``data`` completes, unless paused."""
        if not (self._clean and not self.paused and type(data) is bytes and self.structFormat == self._fmt):
            self._receive(data)
            return
        # Nothing queued nor left unparsed: the common cases go straight through.
        held = self._held
        if not held:
            # A read that is exactly one string (request/response traffic): deliver it
            # with no parsing loop, once sure the decoder holds nothing either.
            size = self._size
            if len(data) > size:
                (length,) = self._unpack_from(data, 0)
                decoder = self._decoder
                if length + size == len(data) and length <= self.MAX_LENGTH and decoder.idle:  # type: ignore[union-attr]
                    self._clean = False
                    self._busy = True
                    try:
                        self.stringReceived(data[size:])
                    finally:
                        self._busy = False
                        if self._replacement is not None:  # a callback assigned recvd
                            self._restart(self._replacement)
                    changed = self._decoder is not decoder or self._max != self.MAX_LENGTH
                    if self.paused or self._inbox or changed:  # the callback left work
                        self._receive(b"")
                    else:
                        self._clean = True
                    return
        if held:
            if len(held) + len(data) > self._join_limit:
                self._receive(data)  # too long to join: to the decoder
                return
            if len(data) < self._held_needs and self._max == self.MAX_LENGTH:
                self._held += data  # the string held is still incomplete
                self._held_needs -= len(data)
                return
            data, self._held = held + data, b""
        else:
            decoder = self._decoder
            assert decoder is not None
            needed = decoder.needed
            if needed:
                if len(data) < needed and self._max == self.MAX_LENGTH:
                    decoder.feed(data)  # the string the decoder holds is still incomplete
                else:
                    self._receive(data)
                return
        # Parse the read in place.
        self._clean = False
        self._busy = True
        self._data, self._off = data, 0
        try:
            clean = self._parse()
        finally:
            self._busy = False
            if self._replacement is not None:  # a callback assigned recvd, then raised
                self._restart(self._replacement)
        if clean and not self._inbox:
            self._clean = True
        else:  # a callback paused, queued, changed a setting...
            self._receive(b"")

    def _receive(self, data: bytes) -> None:
        """Queue ``data``, and parse what is queued unless a callback is running."""
        if self._refused is not None:
            return
        if self._decoder is None:
            self._restart(b"")
        if data:
            self._inbox.append(data if type(data) is bytes else bytes(data))
        if self._busy:
            return  # called back from a callback: the running loop parses it in order
        self._clean = False
        self._busy = True
        try:
            self._run()
        finally:
            self._busy = False
            if self._replacement is not None:  # a callback assigned recvd, then raised
                self._restart(self._replacement)
        self._clean = (
            self._decoder is not None and not self.paused and self._off >= len(self._data) and not self._inbox
        )

    def _run(self) -> None:
        """Parse queued reads until they are used up, paused or refused."""
        while not self.paused and self._refused is None:
            if self._max != self.MAX_LENGTH or self._fmt != self.structFormat:
                self._rebuild()
            decoder = self._decoder
            assert decoder is not None
            if self._off >= len(self._data):
                if not self._inbox:
                    return
                data, held = self._inbox.popleft(), self._held
                if held:
                    self._held = b""
                    if len(held) + len(data) <= self._join_limit:
                        data = held + data
                    else:
                        events = decoder.feed(held)
                        assert not events, "a held string is incomplete and within MAX_LENGTH"
                self._data, self._off = data, 0
            if decoder.needed:
                self._complete(decoder)
            else:
                self._parse()

    def _parse(self) -> bool:
        """Deliver the whole strings of the read, and keep the start of the next one.

        :return: whether the read was used up, no callback interrupting.
        """
        data, off = self._data, self._off
        end = len(data)
        size, unpack_from = self._size, self._unpack_from
        while end - off >= size:
            (length,) = unpack_from(data, off)
            if length > self.MAX_LENGTH:
                self._off = off
                self._refuse(length, data[off:])
                return False
            start = off + size
            off = start + length
            if off > end:
                needs, off = off - end, start - size
                break
            self._off = off
            self.stringReceived(data[start:off])
            if self.paused or self._replacement is not None:
                if self._replacement is not None:
                    self._restart(self._replacement)
                return False
        else:
            needs = size - (end - off)  # the rest of a prefix, then parse again
        self._off = off
        if off == end:
            return True
        if self._max != self.MAX_LENGTH:  # changed by a callback: _run rebuilds the decoder
            return False
        if end - off <= self._join_limit:
            self._held, self._held_needs, self._off = data[off:], needs, end
            return True
        decoder = self._decoder
        assert decoder is not None
        events = decoder.feed(data[off:] if off else data)
        assert not events, "the string is incomplete and within MAX_LENGTH"
        self._off = end
        return True

    def _complete(self, decoder: FrameDecoder[Frame]) -> None:
        """Feed the decoder what the string it holds needs; deliver it when complete."""
        data, off = self._data, self._off
        stop = off + decoder.needed
        self._off = min(stop, len(data))
        for event in decoder.feed(data if off == 0 and stop >= len(data) else data[off:stop]):
            if isinstance(event, Frame):
                self.stringReceived(event.payload)
                if self._replacement is not None:
                    self._restart(self._replacement)
            else:
                assert isinstance(event, Oversized)
                self._refuse(event.length, decoder.spec.struct.pack(*event.header) + data[self._off :])

    def _refuse(self, length: int, unparsed: bytes) -> None:
        """Stop parsing for good, and report a prefix over MAX_LENGTH."""
        self._refused = b"".join([unparsed, *self._inbox])
        self._decoder, self._data, self._off, self._held, self._inbox = None, b"", 0, b"", deque()
        self.lengthLimitExceeded(length)

    def _unparsed(self) -> bytes:
        """The bytes received and not parsed yet, but for the queued reads."""
        held = self._decoder.unconsumed() if self._decoder is not None else b""
        return b"".join([held, self._held, self._data[self._off :]])

    def _rebuild(self) -> None:
        """Build the decoder again for new settings; the partial string it held is re-parsed."""
        self._restart(self._unparsed(), self._inbox)

    def _restart(self, unparsed: bytes, queued: deque[bytes] | None = None) -> None:
        """Build the decoder for the current settings, to parse ``unparsed`` then ``queued``."""
        fmt, max_length = self.structFormat, self.MAX_LENGTH
        spec = spec_for_struct_format(fmt)
        if self.prefixLength != spec.size:
            raise ValueError(f"prefixLength {self.prefixLength} is not calcsize({fmt!r})")
        if not max_length >= 0:
            raise ValueError(f"MAX_LENGTH must be a number >= 0, not {max_length!r}")
        self._decoder = FrameDecoder(spec, max_payload=int(min(max_length, spec.max_payload)))
        self._size, self._unpack_from = spec.size, spec.struct.unpack_from
        self._fmt, self._max = fmt, max_length
        self._replacement = None
        self._clean = False
        self._data, self._off, self._held = unparsed, 0, b""
        self._inbox = queued if queued is not None else deque()

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

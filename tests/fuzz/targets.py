"""Fuzz targets over the sans-IO core, asserting only documented outcomes.

Each target takes one byte string, so an input found by the fuzzer replays in plain
Python (``python tests/fuzz/run.py --replay FILE``).  The first bytes of the input pick
the configuration (header spec, ``max_payload``, accepted kinds, chunking); the rest is
what arrives from the network.

What is checked is what the docstrings of :mod:`sockproto.core` promise, nothing more:

``decoder`` (:class:`~sockproto.core.decoder.FrameDecoder`)
    - ``feed`` returns only :class:`Frame`, :class:`Oversized`, :class:`UnexpectedKind`
      and :class:`Malformed`, and raises nothing but :class:`DecoderFailed` (after a
      :class:`Malformed`);
    - any chunking (byte by byte included) gives the same events as one ``feed``;
    - every frame re-encodes to exactly the bytes it was decoded from, the events tile
      the stream in order, and what no event covers yet is :meth:`unconsumed`, with
      :attr:`needed` the bytes still owed;
    - a payload over ``max_payload`` is an :class:`Oversized`, a kind outside
      ``accept_kinds`` an :class:`UnexpectedKind`, and :class:`Malformed` is the last
      event, for a header the spec's own ``check`` refuses;
    - the bytes held (:attr:`buffered`) never exceed the header size plus ``max_payload``.

``datagram`` (:func:`~sockproto.core.datagram.parse_datagram` and the encoders)
    - the drop reasons come in the documented order, and a parsed frame re-encodes to
      the datagram;
    - an ERROR datagram built for any limit fits it and parses back to its id and code.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Container
from typing import Any

from sockproto.core.datagram import (
    CLIENT_KINDS,
    HEADER_SIZE,
    MAX_UDP_PAYLOAD,
    MIN_DATAGRAM,
    SERVER_KINDS,
    DropReason,
    encode_datagram,
    encode_error_datagram,
    parse_datagram,
)
from sockproto.core.decoder import (
    DEFAULT_MAX_PAYLOAD,
    DecoderFailed,
    Frame,
    FrameDecoder,
    Malformed,
    Oversized,
    UnexpectedKind,
)
from sockproto.core.header import INT16, INT32, INT32LE, SPF1, HeaderSpec
from sockproto.core.spf1 import MAX_ERROR_MESSAGE, Kind, decode_error

__all__ = ["SPECS", "TARGETS", "canary_target", "datagram_target", "decoder_target", "seeds"]

LEGACY = HeaderSpec(
    "legacy", "magic:2s flags:B length:H", constants={"magic": b"LG"}, length_includes_header=True
)
"""A user's legacy header: a constant, a free field, a length that counts the header."""

CUSTOM = HeaderSpec(
    "custom",
    "kind:b id:Q tag:4s ver:B length:I",
    byte_order="little",
    length_adjustment=2,
    constants={"tag": b"ABCD", "ver": 7},
)
"""Little-endian, a signed kind, a 64-bit id, two constants and a length adjustment."""

TINY = HeaderSpec("tiny", "length:B")
"""A one-byte length: every limit is within reach of a short input."""

SPECS: tuple[HeaderSpec, ...] = (SPF1, INT32, INT16, INT32LE, LEGACY, CUSTOM, TINY)

_KIND_SETS: tuple[Container[int] | None, ...] = (None, frozenset((1, 4)))
_DATAGRAM_ACCEPTS: tuple[Container[int], ...] = (SERVER_KINDS, CLIENT_KINDS, frozenset(range(256)))
_BYTE_BY_BYTE_UP_TO = 600  # inputs this short are also fed one byte at a time


def _limits(spec: HeaderSpec) -> list[int]:
    """The ``max_payload`` values tried: at and around every limit."""
    top = spec.max_payload
    return [0, 1, 2, 11, 12, 13, 100, 255, 256, 65535, top - 1, top, top + 1, DEFAULT_MAX_PAYLOAD, 2**40]


def _summary(event: object) -> tuple[Any, ...]:
    if type(event) is Frame:
        return ("frame", event.header, event.payload)
    if isinstance(event, Malformed):
        return ("malformed", event.reason)
    if isinstance(event, Oversized | UnexpectedKind):
        return (type(event).__name__, event.header, event.length, event.kind, event.id)
    raise AssertionError(f"feed returned {event!r}, which is not a documented event")


def _feed_all(decoder: FrameDecoder[Frame], chunks: list[bytes]) -> list[tuple[Any, ...]]:
    """Feed ``chunks``; check the per-feed invariants; return the event summaries."""
    bound = decoder.spec.size + decoder.max_payload
    out: list[tuple[Any, ...]] = []
    for chunk in chunks:
        events = decoder.feed(chunk)
        assert isinstance(events, list), events
        summaries = [_summary(e) for e in events]
        out += summaries
        malformed = [j for j, s in enumerate(summaries) if s[0] == "malformed"]
        if malformed:
            assert malformed == [len(summaries) - 1], f"Malformed is not the last event: {summaries}"
            try:
                decoder.feed(b"x")
            except DecoderFailed:
                pass
            else:
                raise AssertionError("feed() after Malformed did not raise DecoderFailed")
            return out  # the rest of the chunks can no longer be fed
        assert 0 <= decoder.buffered <= bound, f"holds {decoder.buffered} bytes, bound {bound}"
        assert decoder.needed >= 0
        assert decoder.idle == (decoder.needed == 0), (decoder.idle, decoder.needed)
    return out


def _chunks(stream: bytes, rng: random.Random) -> list[bytes]:
    """Cut ``stream`` at random places: mostly small reads, sometimes big ones, some empty."""
    chunks: list[bytes] = []
    off = 0
    while off < len(stream):
        size = rng.choice((0, 1, 1, 2, 3, 5, 11, 12, 13, 64, 1000))
        chunks.append(stream[off : off + size])
        off += size
    return chunks


def _check_tiling(
    spec: HeaderSpec,
    max_payload: int,
    kinds: Container[int] | None,
    stream: bytes,
    events: list[tuple[Any, ...]],
    decoder: FrameDecoder[Frame],
) -> None:
    """The events cover the stream in order; the rest is the frame under way."""
    size = spec.size
    pos = 0
    for n, event in enumerate(events):
        what = event[0]
        if what == "malformed":
            assert n == len(events) - 1
            head = stream[pos : pos + size]
            full = len(head) == size
            expected = spec.check(spec.struct.unpack(head)) if full else spec.check_start(head)
            assert expected is not None, f"Malformed for a valid header {head!r}"
            assert event[1] == expected, (event[1], expected)
            return
        header = event[1]
        packed = spec.struct.pack(*header)
        assert packed == stream[pos : pos + size], (packed, stream[pos : pos + size])
        assert spec.check(header) is None, f"an event for an invalid header {header!r}"
        length = header[spec.length_index] - spec.length_offset
        kind = header[spec.kind_index] if spec.has_kind else None
        if what == "frame":
            payload = event[2]
            assert len(payload) == length <= max_payload, (len(payload), length, max_payload)
            assert packed + payload == stream[pos : pos + size + length], "the frame does not re-encode"
            if kinds is not None and spec.has_kind:
                assert kind in kinds, f"frame of kind {kind} delivered, accepted {kinds}"
        elif what == "Oversized":
            assert event[2] == length > max_payload, (event[2], length, max_payload)
        else:
            assert event[2] == length <= max_payload, (event[2], length, max_payload)
            assert kinds is not None and spec.has_kind and kind not in kinds, (kind, kinds)
        if spec.has_kind and what != "frame":
            assert event[3] == kind
        if spec.has_id and what != "frame":
            assert event[4] == header[spec.id_index]
        pos += size + length
    rest = stream[pos:]
    if pos > len(stream):  # discarding a skipped payload
        assert decoder.unconsumed() == b""
        assert decoder.needed == pos - len(stream)
        return
    assert decoder.unconsumed() == rest, (decoder.unconsumed(), rest)
    assert decoder.buffered <= len(rest)
    if not rest:
        assert decoder.needed == 0 and decoder.idle
    elif len(rest) < size:
        assert spec.check_start(rest) is None, f"no Malformed for {rest!r}"
        assert decoder.needed == size - len(rest)
    else:
        header = spec.struct.unpack(rest[:size])
        assert spec.check(header) is None, f"no Malformed for {rest[:size]!r}"
        length = header[spec.length_index] - spec.length_offset
        assert length <= max_payload, "an oversized payload is being kept"
        assert decoder.needed == size + length - len(rest) > 0


def decoder_target(data: bytes) -> None:
    """Decode ``data[4:]`` with the configuration its first four bytes pick."""
    if len(data) < 4:
        return
    spec = SPECS[data[0] % len(SPECS)]
    limits = _limits(spec)
    max_payload = limits[data[1] % len(limits)]
    kinds = _KIND_SETS[data[2] & 1]
    rng = random.Random(data[2] >> 1 | data[3] << 7)
    stream = data[4:]

    whole: FrameDecoder[Frame] = FrameDecoder(spec, max_payload=max_payload, accept_kinds=kinds)
    assert whole.max_payload == min(max_payload, spec.max_payload)
    expected = _feed_all(whole, [stream])
    _check_tiling(spec, whole.max_payload, kinds, stream, expected, whole)

    chunks = _chunks(stream, rng)
    chunked: FrameDecoder[Frame] = FrameDecoder(spec, max_payload=max_payload, accept_kinds=kinds)
    got = _feed_all(chunked, chunks)
    assert got == expected, f"chunked {got!r} != whole {expected!r}"
    if not expected or expected[-1][0] != "malformed":
        assert chunked.unconsumed() == whole.unconsumed()
        assert chunked.needed == whole.needed

    if len(stream) <= _BYTE_BY_BYTE_UP_TO:
        single: FrameDecoder[Frame] = FrameDecoder(spec, max_payload=max_payload, accept_kinds=kinds)
        one = _feed_all(single, [stream[i : i + 1] for i in range(len(stream))])
        assert one == expected, f"byte by byte {one!r} != whole {expected!r}"


_HEADER = struct.Struct(">2sBBII")


def datagram_target(data: bytes) -> None:
    """Parse ``data[1:]`` as a datagram; build an ERROR datagram from the same bytes."""
    if not data:
        return
    accept = _DATAGRAM_ACCEPTS[data[0] % len(_DATAGRAM_ACCEPTS)]
    datagram = data[1:]
    result = parse_datagram(datagram, accept)
    if len(datagram) < HEADER_SIZE:
        assert result is DropReason.TOO_SHORT, result
    elif datagram[:3] != b"SP\x01":
        assert result is DropReason.FOREIGN, result
    else:
        _, _, kind, ident, length = _HEADER.unpack_from(datagram)
        follows = len(datagram) - HEADER_SIZE
        if length > follows:
            assert result is DropReason.TRUNCATED, result
        elif length < follows:
            assert result is DropReason.TRAILING, result
        elif kind not in accept:
            assert result is DropReason.UNEXPECTED_KIND, result
        else:
            assert isinstance(result, Frame), result
            assert (result.kind, result.id, result.payload) == (kind, ident, datagram[HEADER_SIZE:])
            assert result.spec is SPF1
            assert encode_datagram(kind, ident, result.payload) == datagram
    _error_datagram(data)


def _error_datagram(data: bytes) -> None:
    """An ERROR datagram for any limit fits it and parses back; its message is cut, never changed."""
    if len(data) < 8:
        return
    ident = int.from_bytes(data[1:5], "big")
    code = data[5]
    limit = MIN_DATAGRAM + int.from_bytes(data[6:8], "big") % (MAX_UDP_PAYLOAD - MIN_DATAGRAM + 1)
    repeat = 1 + data[0] % 64  # long messages too, up to tens of KiB
    message = data[8:].decode("utf-8", "replace") * repeat
    reply = encode_error_datagram(ident, code, message, limit)
    assert len(reply) <= limit, (len(reply), limit)
    frame = parse_datagram(reply, CLIENT_KINDS)
    assert isinstance(frame, Frame), frame
    assert (frame.kind, frame.id) == (Kind.ERROR, ident)
    got_code, got_message = decode_error(frame.payload)
    assert got_code == code
    raw = got_message.encode("utf-8")
    assert len(raw) <= MAX_ERROR_MESSAGE
    assert message.encode("utf-8").startswith(raw), "the ERROR message was changed, not cut"


def canary_target(data: bytes) -> None:
    """Fail on inputs starting with ``FUZ``: proves the runner finds and reports a failing input."""
    if data[:3] == b"FUZ":
        raise AssertionError("the canary input was found")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "decoder": decoder_target,
    "datagram": datagram_target,
    "canary": canary_target,
}


def seeds(target: str) -> list[bytes]:
    """A few valid inputs to start the fuzzer from (it mutates them)."""
    if target == "canary":
        return [b"F", b"FU-"]
    if target == "datagram":
        good = encode_datagram(1, 7, b"hello")
        return [
            bytes([0]) + good,
            bytes([1]) + encode_datagram(3, 9, b"\x00\x04boom"),
            bytes([2]) + good[:-1],
            bytes([0]) + good + b"!",
            bytes([0]) + b"XP\x01" + good[3:],
        ]
    out = []
    for i, spec in enumerate(SPECS):
        fields: dict[str, int] = {}
        if spec.has_kind:
            fields["kind"] = 1
        if spec.has_id:
            fields["id"] = 5
        stream = b"".join(spec.encode(p, **fields) for p in (b"abc", b"", b"xy" * 20))
        for limit in (2, 255):
            out.append(bytes([i, _limits(spec).index(limit), 5, 1]) + stream)
    return out

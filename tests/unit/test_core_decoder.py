"""The incremental decoder: chunking, limits, discard mode, malformed streams."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from sockproto.core import (
    INT16,
    INT32,
    SPF1,
    DecoderFailed,
    Frame,
    FrameDecoder,
    HeaderSpec,
    Kind,
    Malformed,
    Oversized,
    UnexpectedKind,
)


def spf1(payload: bytes, kind: int = Kind.REQUEST, ident: int = 1) -> bytes:
    return SPF1.encode(payload, kind=kind, id=ident)


def summary(events: list[object]) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for e in events:
        if isinstance(e, Frame):
            out.append(("frame", e.kind, e.id, e.payload))
        elif isinstance(e, (Oversized, UnexpectedKind)):
            out.append((type(e).__name__, e.kind, e.id, e.length))
        else:
            assert isinstance(e, Malformed)
            out.append(("malformed",))
    return out


class FramingTests(SynchronousTestCase):
    def test_frames_from_one_chunk(self) -> None:
        d = FrameDecoder(SPF1)
        events = d.feed(spf1(b"a", ident=1) + spf1(b"", ident=2) + spf1(b"ccc", Kind.PING, 3))
        self.assertEqual(
            summary(events),
            [("frame", 1, 1, b"a"), ("frame", 1, 2, b""), ("frame", 4, 3, b"ccc")],
        )
        self.assertTrue(d.idle)
        self.assertEqual(d.buffered, 0)

    def test_byte_by_byte(self) -> None:
        stream = spf1(b"hello", ident=9) + spf1(b"world", ident=10)
        d = FrameDecoder(SPF1)
        events = [e for i in range(len(stream)) for e in d.feed(stream[i : i + 1])]
        self.assertEqual(summary(events), [("frame", 1, 9, b"hello"), ("frame", 1, 10, b"world")])

    def test_header_fields_and_type(self) -> None:
        (frame,) = FrameDecoder(SPF1).feed(spf1(b"x", Kind.REQUEST, 5))
        assert isinstance(frame, Frame)
        self.assertEqual(frame.fields["magic"], b"SP")
        self.assertEqual(frame.fields["length"], 1)
        self.assertIs(type(frame.payload), bytes)
        self.assertIn("spf1", repr(frame))

    def test_bare_length_prefix(self) -> None:
        d = FrameDecoder(INT32)
        (frame,) = d.feed(INT32.encode(b"abc"))
        assert isinstance(frame, Frame)
        self.assertEqual((frame.kind, frame.id, frame.payload), (None, None, b"abc"))

    def test_accepts_bytearray_and_memoryview(self) -> None:
        d = FrameDecoder(INT16)
        data = INT16.encode(b"xyz")
        self.assertEqual(summary(d.feed(bytearray(data[:3]))), [])
        self.assertEqual(summary(d.feed(memoryview(data)[3:])), [("frame", None, None, b"xyz")])

    def test_length_includes_header(self) -> None:
        spec = HeaderSpec("incl", "length:H", length_includes_header=True)
        d = FrameDecoder(spec)
        self.assertEqual(
            summary(d.feed(b"\x00\x04ab\x00\x02")),
            [("frame", None, None, b"ab"), ("frame", None, None, b"")],
        )
        self.assertEqual(summary(d.feed(b"\x00\x01")), [("malformed",)])


class ZeroCopyTests(SynchronousTestCase):
    """A frame spread over reads is held as the reads themselves and joined once."""

    def test_pieces_are_views_of_the_chunks(self) -> None:
        payload = bytes(range(256)) * 1024  # 256 KiB
        stream = INT32.encode(payload)
        chunks = [stream[i : i + 65536] for i in range(0, len(stream), 65536)]
        d = FrameDecoder(INT32)
        for chunk in chunks[:-1]:
            self.assertEqual(d.feed(chunk), [])
        held = d._parts
        self.assertEqual(len(held), len(chunks) - 1)
        # The first piece is a view into the first chunk; the rest are the chunks themselves.
        assert isinstance(held[0], memoryview)
        self.assertIs(held[0].obj, chunks[0])
        for piece, chunk in zip(held[1:], chunks[1:-1], strict=True):
            self.assertIs(piece, chunk)
        self.assertEqual(d.buffered, len(stream) - 4 - len(chunks[-1]))
        (frame,) = d.feed(chunks[-1])
        assert isinstance(frame, Frame)
        self.assertEqual(frame.payload, payload)
        self.assertEqual(d.buffered, 0)

    def test_header_split_across_reads_keeps_only_header_bytes(self) -> None:
        stream = spf1(b"p" * 1000)
        d = FrameDecoder(SPF1)
        self.assertEqual(d.feed(stream[:5]), [])
        self.assertEqual(d.buffered, 5)
        (frame,) = d.feed(stream[5:])
        assert isinstance(frame, Frame)
        self.assertEqual(frame.payload, b"p" * 1000)


class LimitTests(SynchronousTestCase):
    def test_oversized_reported_at_header_and_discarded(self) -> None:
        d = FrameDecoder(SPF1, max_payload=10)
        big = spf1(b"z" * 100_000, ident=4)
        events = d.feed(big[:12])
        self.assertEqual(summary(events), [("Oversized", 1, 4, 100_000)])
        for i in range(12, len(big), 1000):
            self.assertEqual(d.feed(big[i : i + 1000]), [])
            self.assertEqual(d.buffered, 0)  # discarded, never buffered
        self.assertEqual(summary(d.feed(spf1(b"ok", ident=5))), [("frame", 1, 5, b"ok")])

    def test_max_payload_is_inclusive(self) -> None:
        d = FrameDecoder(SPF1, max_payload=3)
        self.assertEqual(
            summary(d.feed(spf1(b"abc") + spf1(b"abcd", ident=2))),
            [("frame", 1, 1, b"abc"), ("Oversized", 1, 2, 4)],
        )

    def test_max_payload_capped_by_header(self) -> None:
        self.assertEqual(FrameDecoder(INT16, max_payload=10**9).max_payload, 65535)
        self.assertRaises(ValueError, FrameDecoder, INT16, max_payload=-1)

    def test_unexpected_kind_skipped(self) -> None:
        d = FrameDecoder(SPF1, accept_kinds={Kind.REQUEST})
        events = d.feed(spf1(b"xx", Kind.RESPONSE, 3) + spf1(b"y", Kind.REQUEST, 4))
        self.assertEqual(summary(events), [("UnexpectedKind", 2, 3, 2), ("frame", 1, 4, b"y")])

    def test_oversized_wins_over_unexpected_kind(self) -> None:
        d = FrameDecoder(SPF1, max_payload=1, accept_kinds={Kind.REQUEST})
        self.assertEqual(summary(d.feed(spf1(b"xx", 9, 3))), [("Oversized", 9, 3, 2)])

    def test_kind_filter_ignored_without_kind_field(self) -> None:
        d = FrameDecoder(INT32, accept_kinds={1})
        self.assertEqual(summary(d.feed(INT32.encode(b"a"))), [("frame", None, None, b"a")])


class MalformedTests(SynchronousTestCase):
    def test_wrong_magic(self) -> None:
        d = FrameDecoder(SPF1)
        events = d.feed(spf1(b"ok") + b"XX\x01\x01" + bytes(8))
        self.assertEqual(summary(events), [("frame", 1, 1, b"ok"), ("malformed",)])
        assert isinstance(events[1], Malformed)
        self.assertIn("magic", events[1].reason)
        self.assertRaises(DecoderFailed, d.feed, spf1(b"more"))

    def test_wrong_version(self) -> None:
        events = FrameDecoder(SPF1).feed(b"SP\x02\x01" + bytes(8))
        self.assertEqual(summary(events), [("malformed",)])

    def test_garbage_refused_from_its_first_bytes(self) -> None:
        for start in (b"G", b"GET", b"S", b"SQ", b"SP\x02"):
            events = FrameDecoder(SPF1).feed(start)
            expected = [] if b"SP\x01".startswith(start) else [("malformed",)]
            self.assertEqual(summary(events), expected, start)

    def test_partial_header_checked_across_reads(self) -> None:
        d = FrameDecoder(SPF1)
        self.assertEqual(d.feed(b"S"), [])
        self.assertEqual(summary(d.feed(b"X")), [("malformed",)])

    def test_length_field_under_the_adjustment_names_the_field(self) -> None:
        """A length field smaller than what a positive adjustment adds cannot be valid."""
        spec = HeaderSpec("pos", "length:I", length_adjustment=4)
        for wire in (0, 3):
            events = FrameDecoder(spec).feed(wire.to_bytes(4, "big") + b"abc")
            self.assertEqual(summary(events), [("malformed",)])
            assert isinstance(events[0], Malformed)
            self.assertIn("length field 'length'", events[0].reason)
        self.assertEqual(summary(FrameDecoder(spec).feed(b"\0\0\0\x04")), [("frame", None, None, b"")])

    def test_negative_adjustment_decodes_every_length_field(self) -> None:
        spec = HeaderSpec("neg", "length:I", length_adjustment=-4)
        events = FrameDecoder(spec).feed(b"\0\0\0\x01abcde")
        self.assertEqual(summary(events), [("frame", None, None, b"abcde")])


class PayloadModeTests(SynchronousTestCase):
    """``frame_type=bytes``: a bare length prefix's frames as their payloads."""

    def test_payloads_whatever_the_chunking(self) -> None:
        stream = b"".join(INT32.encode(p) for p in (b"a", b"", b"ccc" * 50_000, b"d"))
        whole: FrameDecoder[bytes] = FrameDecoder(INT32, frame_type=bytes)
        self.assertEqual(whole.feed(stream), [b"a", b"", b"ccc" * 50_000, b"d"])
        split: FrameDecoder[bytes] = FrameDecoder(INT32, frame_type=bytes)
        events = [e for i in range(0, len(stream), 7) for e in split.feed(stream[i : i + 7])]
        self.assertEqual(events, [b"a", b"", b"ccc" * 50_000, b"d"])

    def test_limits_still_reported(self) -> None:
        d: FrameDecoder[bytes] = FrameDecoder(INT16, max_payload=2, frame_type=bytes)
        events = d.feed(INT16.encode(b"xyz") + INT16.encode(b"ok"))
        self.assertEqual(summary(events[:1]), [("Oversized", None, None, 3)])
        self.assertEqual(events[1:], [b"ok"])

    def test_needs_a_bare_header(self) -> None:
        self.assertRaises(ValueError, FrameDecoder, SPF1, frame_type=bytes)
        legacy = HeaderSpec("incl", "length:H", length_includes_header=True)
        self.assertRaises(ValueError, FrameDecoder, legacy, frame_type=bytes)

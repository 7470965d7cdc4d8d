"""FrameDecoder.needed and FrameDecoder.unconsumed(): a stream handed over frame by frame."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core import INT16, INT32, SPF1, Frame, FrameDecoder, Kind, Oversized, UnexpectedKind


class NeededTests(SynchronousTestCase):
    def test_between_frames(self) -> None:
        d = FrameDecoder(INT32)
        self.assertEqual((d.needed, d.unconsumed()), (0, b""))
        d.feed(INT32.encode(b"abc"))
        self.assertEqual((d.needed, d.unconsumed()), (0, b""))

    def test_partial_header_then_payload(self) -> None:
        frame = SPF1.encode(b"hello", kind=Kind.REQUEST, id=7)
        d = FrameDecoder(SPF1)
        d.feed(frame[:5])
        self.assertEqual((d.needed, d.unconsumed()), (SPF1.size - 5, frame[:5]))
        d.feed(frame[5:14])
        self.assertEqual((d.needed, d.unconsumed()), (len(frame) - 14, frame[:14]))
        d.feed(frame[14:16])
        self.assertEqual((d.needed, d.unconsumed()), (len(frame) - 16, frame[:16]))

    def test_feeding_needed_bytes_gives_at_most_one_event(self) -> None:
        stream = INT16.encode(b"x" * 10) + INT16.encode(b"") + INT16.encode(b"yz")
        d = FrameDecoder(INT16)
        payloads: list[bytes] = []
        off = 0
        while off < len(stream):
            take = d.needed or INT16.size  # between frames: one header
            events = d.feed(stream[off : off + take])
            off += take
            self.assertLessEqual(len(events), 1)
            payloads += [e.payload for e in events if isinstance(e, Frame)]
        self.assertEqual(payloads, [b"x" * 10, b"", b"yz"])

    def test_discarding_holds_nothing(self) -> None:
        d = FrameDecoder(INT32, max_payload=4)
        (event,) = d.feed(INT32.encode(b"123456")[:7])
        self.assertIsInstance(event, Oversized)
        self.assertEqual((d.needed, d.unconsumed()), (3, b""))
        s = FrameDecoder(SPF1, accept_kinds={int(Kind.REQUEST)})
        (event,) = s.feed(SPF1.encode(b"pong", kind=Kind.PONG, id=1)[:13])
        self.assertIsInstance(event, UnexpectedKind)
        self.assertEqual((s.needed, s.unconsumed()), (3, b""))

    def test_unconsumed_restarts_another_decoder(self) -> None:
        """A new limit mid-stream: the held bytes are handed to another decoder."""
        stream = INT32.encode(b"a" * 100) + INT32.encode(b"b")
        old = FrameDecoder(INT32)
        old.feed(stream[:60])
        new = FrameDecoder(INT32, max_payload=50)
        events = new.feed(old.unconsumed() + stream[60:])
        self.assertIsInstance(events[0], Oversized)
        self.assertEqual([e.payload for e in events[1:] if isinstance(e, Frame)], [b"b"])

    @given(st.lists(st.binary(max_size=40), max_size=6), st.lists(st.integers(1, 50), max_size=40))
    def test_needed_and_unconsumed_track_the_stream(self, payloads: list[bytes], sizes: list[int]) -> None:
        stream = b"".join(INT16.encode(p) for p in payloads)
        d = FrameDecoder(INT16)
        got: list[bytes] = []
        off = 0
        for size in [*sizes, len(stream)]:
            piece = stream[off : off + size]
            got += [e.payload for e in d.feed(piece) if isinstance(e, Frame)]
            off += len(piece)
            # The held bytes are exactly the stream since the last frame boundary.
            boundary = sum(INT16.size + len(p) for p in payloads[: len(got)])
            self.assertEqual(d.unconsumed(), stream[boundary:off])
            if d.unconsumed():
                if len(d.unconsumed()) < INT16.size:
                    self.assertEqual(d.needed, INT16.size - len(d.unconsumed()))
                else:
                    self.assertEqual(d.needed, INT16.size + len(payloads[len(got)]) - (off - boundary))
            else:
                self.assertEqual(d.needed, 0)
        self.assertEqual(got, payloads)

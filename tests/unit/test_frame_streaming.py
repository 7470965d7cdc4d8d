"""Streaming frame handlers (issue 16): request frames in pieces, bounded memory, errors after the frame."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from itertools import pairwise
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core.decoder import Frame, FrameDecoder, Oversized, StreamPiece, StreamStart
from sockproto.core.frame_connection import FrameServerConnection
from sockproto.core.frame_stream import DEFAULT_HIGH_WATER, BodyHold, FrameBody
from sockproto.core.header import INT32, SPF1
from sockproto.core.proxy_encode import encode_v2
from sockproto.core.spf1 import ErrorCode, Kind, decode_error
from sockproto.frame.server import FrameServerFactory
from sockproto.frame.streaming import FrameStreamingProtocol
from sockproto.handlers import echo, sha256, sha256_stream
from sockproto.serving.metrics import ServiceMetrics
from sockproto.serving.proxy import ProxySettings
from sockproto.serving.streaming import BodyTruncated, SizedAnswer, streaming, streaming_form
from sockproto.tap import frame as tap
from sockproto.testing import HalfCloseTransport, frame_pair
from sockproto.testing.frames import parse_frames as split_frames
from sockproto.testing.memory import CLIENT_ADDRESS, connect_protocols

MiB = 1024 * 1024
REQ, PING = int(Kind.REQUEST), int(Kind.PING)


def frame(payload: bytes, ident: int = 1, kind: int = REQ) -> bytes:
    return SPF1.encode(payload, kind=kind, id=ident)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in pairwise(points) if b > a]


class DecoderTests(SynchronousTestCase):
    """The sans-IO decoder in streaming mode: StreamStart, then pieces, never joined."""

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(st.tuples(st.booleans(), st.binary(max_size=300)), max_size=8),
        st.lists(st.integers(min_value=0, max_value=5000), max_size=12),
    )
    def test_any_chunking_gives_the_same_frames_and_pieces(
        self, frames: list[tuple[bool, bytes]], cuts: list[int]
    ) -> None:
        stream = b"".join(frame(p, i, PING if ping else REQ) for i, (ping, p) in enumerate(frames))
        chunks = chunked(stream, cuts)
        decoder: FrameDecoder[Frame] = FrameDecoder(SPF1, accept_kinds=(REQ, PING), stream_kinds=(REQ,))
        got: list[tuple[str, int | None, bytes]] = []
        open_: list[bytes] | None = None
        for chunk in chunks:
            for event in decoder.feed(chunk):
                if isinstance(event, StreamStart):
                    assert open_ is None
                    open_ = []
                    ident = event.id
                elif isinstance(event, StreamPiece):
                    assert open_ is not None
                    assert len(event.data) <= len(chunk)  # a slice of one read, never a join
                    open_.append(event.data)
                    if event.last:
                        got.append(("req", ident, b"".join(open_)))
                        open_ = None
                else:
                    assert isinstance(event, Frame)
                    got.append(("ping", event.id, event.payload))
        self.assertIsNone(open_)
        self.assertTrue(decoder.idle)
        want = [("ping" if ping else "req", i, p) for i, (ping, p) in enumerate(frames)]
        self.assertEqual(got, want)

    def test_piece_of_a_whole_read_is_that_read(self) -> None:
        decoder: FrameDecoder[Frame] = FrameDecoder(SPF1, accept_kinds=(REQ, PING), stream_kinds=(REQ,))
        data = frame(b"x" * 100)
        decoder.feed(data[:20])
        middle = data[20:60]
        (piece,) = decoder.feed(middle)
        assert isinstance(piece, StreamPiece)
        self.assertIs(piece.data, middle)  # not even sliced: no copy
        self.assertFalse(piece.last)

    def test_over_max_streamed_is_oversized_and_skipped(self) -> None:
        decoder: FrameDecoder[Frame] = FrameDecoder(
            SPF1, accept_kinds=(REQ, PING), stream_kinds=(REQ,), max_streamed=10
        )
        events = decoder.feed(frame(b"x" * 11, 1) + frame(b"ok", 2))
        self.assertIsInstance(events[0], Oversized)
        self.assertIsInstance(events[1], StreamStart)
        self.assertEqual([e.data for e in events[2:]], [b"ok"])  # type: ignore[union-attr]

    def test_whole_frames_keep_max_payload_while_streamed_ones_pass_it(self) -> None:
        decoder: FrameDecoder[Frame] = FrameDecoder(
            SPF1, max_payload=4, accept_kinds=(REQ, PING), stream_kinds=(REQ,)
        )
        events = decoder.feed(frame(b"12345", 1, PING) + frame(b"12345", 2))
        self.assertIsInstance(events[0], Oversized)
        self.assertIsInstance(events[1], StreamStart)

    def test_header_without_kind_streams_every_frame(self) -> None:
        decoder: FrameDecoder[Frame] = FrameDecoder(INT32, stream_kinds=(REQ,))
        events = decoder.feed(INT32.encode(b"ab") + INT32.encode(b""))
        self.assertEqual([type(e) for e in events], [StreamStart, StreamPiece, StreamStart, StreamPiece])
        self.assertEqual(events[3].data, b"")  # type: ignore[union-attr]
        self.assertTrue(events[3].last)  # type: ignore[union-attr]

    def test_bytes_frame_type_cannot_stream(self) -> None:
        self.assertRaises(ValueError, FrameDecoder, INT32, frame_type=bytes, stream_kinds=(REQ,))


class Started:
    """Collects the streamed requests a connection starts."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.bodies: list[FrameBody] = []

    def __call__(self, request: Any, body: FrameBody) -> None:
        self.requests.append(request)
        self.bodies.append(body)


def connection(header: Any = SPF1, **kw: Any) -> tuple[FrameServerConnection[Any], Started, ServiceMetrics]:
    started = Started()
    metrics = ServiceMetrics("frame")
    kw.setdefault("max_payload", 1 << 30)
    kw.setdefault("max_in_flight", 8)
    conn: FrameServerConnection[Any] = FrameServerConnection(header, counters=metrics, streamed=started, **kw)
    return conn, started, metrics


def serve(conn: FrameServerConnection[Any], data: bytes) -> None:
    conn.serve(data, lambda r: b"unused", lambda r, result, exc: None)


class ConnectionTests(SynchronousTestCase):
    """The sans-IO connection with a streaming handler."""

    def test_answer_given_early_waits_for_the_end_of_the_frame(self) -> None:
        conn, started, _ = connection()
        data = frame(b"a" * 100, 7)
        serve(conn, data[:50])
        (request,) = started.requests
        self.assertEqual((request.id, request.payload), (7, b""))
        conn.answer(request, b"done")
        self.assertEqual(conn.data_to_send(), b"")  # the client is still sending its frame
        self.assertTrue(started.bodies[0].finished)  # the rest is read and dropped
        serve(conn, data[50:])
        self.assertEqual(split_frames(conn.data_to_send()), [(Kind.RESPONSE, 7, b"done")])
        self.assertEqual(started.bodies[0].hold.held, 0)

    def test_failure_mid_body_is_error_4_after_the_frame_then_the_next_request(self) -> None:
        conn, started, metrics = connection()
        data = frame(b"a" * 100, 1) + frame(b"next", 2)
        serve(conn, data[:40])
        conn.fail(started.requests[0], ErrorCode.HANDLER_FAILED, "handler failed: boom")
        self.assertEqual(conn.data_to_send(), b"")
        serve(conn, data[40:])
        conn.answer(started.requests[1], b"ok")
        out = split_frames(conn.data_to_send())
        self.assertEqual(out[0][:2], (Kind.ERROR, 1))
        self.assertEqual(decode_error(out[0][2])[0], ErrorCode.HANDLER_FAILED)
        self.assertEqual(out[1], (Kind.RESPONSE, 2, b"ok"))
        self.assertFalse(conn.must_close)
        self.assertEqual((metrics.requests, metrics.answers), (2, 1))

    def test_pieces_go_to_the_body_in_order_never_joined(self) -> None:
        conn, started, _ = connection()
        data = frame(bytes(range(256)) * 40, 3)
        reads = [data[i : i + 1000] for i in range(0, len(data), 1000)]
        for read in reads:
            serve(conn, read)
        body = started.bodies[0]
        got = []
        while (chunk := body.take()) is not None:
            got.append(chunk)
        self.assertEqual(b"".join(got), bytes(range(256)) * 40)
        self.assertTrue(all(len(c) <= 1000 for c in got))
        self.assertTrue(body.ended)

    def test_held_bytes_pause_reading_until_taken(self) -> None:
        conn, started, _ = connection(hold=BodyHold(high_water=100, low_water=20))
        data = frame(b"x" * 1000, 1)
        serve(conn, data[:80])
        self.assertTrue(conn.wants_read)
        serve(conn, data[80:200])
        self.assertFalse(conn.wants_read)
        body = started.bodies[0]
        body.take()
        self.assertFalse(conn.wants_read)  # still over the low-water mark
        while body.take() is not None:
            pass
        self.assertTrue(body.resume_wanted())
        self.assertTrue(conn.wants_read)

    def test_in_flight_limit_never_holds_back_an_admitted_body(self) -> None:
        conn, started, _ = connection(max_in_flight=1)
        data = frame(b"x" * 100, 1) + frame(b"y", 2)
        serve(conn, data[:50])
        self.assertTrue(conn.wants_read)  # the handler needs the rest of its own frame
        serve(conn, data[50:])
        self.assertEqual(len(started.requests), 1)  # the next one waits: 1 in flight
        self.assertEqual(started.bodies[0].received, 100)
        self.assertFalse(conn.wants_read)
        conn.answer(started.requests[0], b"a")
        conn.serve_backlog(lambda r: b"", lambda r, res, exc: None)
        self.assertEqual(len(started.requests), 2)

    def test_eof_mid_frame_truncates_the_body_and_drops_its_answer(self) -> None:
        conn, started, metrics = connection()
        serve(conn, frame(b"x" * 100, 1)[:30])
        conn.eof_received()
        body = started.bodies[0]
        self.assertTrue(body.truncated)
        self.assertEqual(conn.fed_bodies(), [body])
        conn.answer(started.requests[0], b"late")
        self.assertEqual(conn.data_to_send(), b"")
        self.assertTrue(conn.must_close)
        self.assertEqual((metrics.abandoned, conn.in_flight), (1, 0))

    def test_answered_early_then_cut_sends_nothing_and_counts_once(self) -> None:
        conn, started, metrics = connection()
        serve(conn, frame(b"x" * 100, 1)[:30])
        conn.answer(started.requests[0], b"early")
        conn.eof_received()
        self.assertEqual(conn.data_to_send(), b"")
        self.assertEqual((metrics.abandoned, metrics.answers, conn.in_flight), (0, 1, 0))
        self.assertFalse(started.bodies[0].truncated)  # its handler was done with it

    def test_an_answer_releases_what_its_body_still_holds(self) -> None:
        conn, started, _ = connection(hold=BodyHold(high_water=100, low_water=20))
        serve(conn, frame(b"x" * 90, 1) + frame(b"y" * 30, 2)[:20])
        self.assertEqual(conn.hold.held, 98)  # type: ignore[union-attr]
        conn.answer(started.requests[0], b"never read it")
        self.assertEqual(conn.hold.held, 8)  # type: ignore[union-attr]
        serve(conn, frame(b"y" * 30, 2)[20:])
        self.assertTrue(started.bodies[1].ended is False and started.bodies[1].complete)

    def test_a_held_back_frame_left_unfinished_at_eof_never_starts(self) -> None:
        conn, started, _ = connection(max_in_flight=1)
        serve(conn, frame(b"a", 1) + frame(b"b" * 100, 2)[:40])  # the second waits: 1 in flight
        conn.eof_received()  # the client half-closed mid-frame
        conn.answer(started.requests[0], b"A")
        conn.serve_backlog(lambda r: b"", lambda r, res, exc: None)
        self.assertEqual(len(started.requests), 1)  # found by the state machine: it started, never ended
        self.assertEqual(split_frames(conn.data_to_send()), [(Kind.RESPONSE, 1, b"A")])
        self.assertTrue(conn.must_close)

    def test_request_order_without_ids(self) -> None:
        conn, started, _ = connection(INT32)
        serve(conn, INT32.encode(b"first") + INT32.encode(b"second"))
        first, second = started.requests
        conn.answer(second, b"2")
        self.assertEqual(conn.data_to_send(), b"")
        conn.answer(first, b"1")
        self.assertEqual(conn.data_to_send(), INT32.encode(b"1") + INT32.encode(b"2"))

    def test_pings_stay_whole_and_are_answered(self) -> None:
        conn, started, _ = connection()
        serve(conn, frame(b"p", 5, PING) + frame(b"body", 6))
        self.assertEqual(split_frames(conn.data_to_send()), [(Kind.PONG, 5, b"p")])
        self.assertEqual(len(started.requests), 1)

    def test_stalled_frame_times_out(self) -> None:
        conn, started, _ = connection()
        serve(conn, frame(b"x" * 100, 1)[:30])
        self.assertTrue(conn.receiving_body)
        self.assertTrue(conn.time_out())
        self.assertTrue(started.bodies[0].truncated)
        self.assertFalse(conn.receiving_body)


class SizedAnswerTests(SynchronousTestCase):
    """The sans-IO connection: a sized answer's payload in pieces, nothing interleaved."""

    def test_header_then_pieces_then_what_waited(self) -> None:
        conn, started, metrics = connection()
        serve(conn, frame(b"big", 1) + frame(b"small", 2))
        big, small = started.requests
        conn.answer_sized(big, 6)
        self.assertIs(conn.sending, big)
        self.assertFalse(conn.wants_read)  # nothing is served while it goes out
        conn.answer(small, b"ok")  # ready meanwhile: held
        serve(conn, frame(b"p", 3, PING))  # held back, answered after
        self.assertTrue(conn.answer_data(big, b"abc"))
        first = conn.data_to_send()
        self.assertEqual(first, SPF1.pack_header(6, kind=int(Kind.RESPONSE), id=1) + b"abc")
        self.assertTrue(conn.answer_data(big, b"def"))
        self.assertTrue(conn.answer_end(big))
        conn.serve_backlog(lambda r: b"", lambda r, res, exc: None)
        rest = split_frames(first + conn.data_to_send())
        self.assertEqual(
            rest, [(Kind.RESPONSE, 1, b"abcdef"), (Kind.RESPONSE, 2, b"ok"), (Kind.PONG, 3, b"p")]
        )
        self.assertIsNone(conn.sending)
        self.assertEqual(metrics.answers, 2)

    def test_too_much_or_too_little_is_refused(self) -> None:
        conn, started, _ = connection()
        serve(conn, frame(b"a", 1) + frame(b"b", 2))
        conn.answer_sized(started.requests[0], 2)
        self.assertFalse(conn.answer_data(started.requests[0], b"xyz"))
        conn2, started2, _ = connection()
        serve(conn2, frame(b"a", 1))
        conn2.answer_sized(started2.requests[0], 2)
        conn2.answer_data(started2.requests[0], b"x")
        self.assertFalse(conn2.answer_end(started2.requests[0]))

    def test_in_request_order_without_ids(self) -> None:
        conn, started, _ = connection(INT32)
        serve(conn, INT32.encode(b"one") + INT32.encode(b"two") + INT32.encode(b"three"))
        one, two, three = started.requests
        conn.answer_sized(two, 1)
        conn.answer(three, b"3")
        self.assertIsNone(conn.sending)  # its turn comes after the first answer
        conn.answer(one, b"1")
        self.assertIs(conn.sending, two)
        conn.answer_data(two, b"2")
        conn.answer_end(two)
        self.assertEqual(conn.data_to_send(), INT32.encode(b"1") + INT32.encode(b"2") + INT32.encode(b"3"))

    def test_given_early_its_header_waits_for_the_end_of_the_frame(self) -> None:
        conn, started, _ = connection()
        data = frame(b"x" * 100, 4)
        serve(conn, data[:50])
        conn.answer_sized(started.requests[0], 3)
        self.assertIsNone(conn.sending)
        self.assertEqual(conn.data_to_send(), b"")
        serve(conn, data[50:])
        self.assertIs(conn.sending, started.requests[0])

    def test_no_idle_timeout_and_no_drain_close_while_it_goes_out(self) -> None:
        conn, started, _ = connection()
        serve(conn, frame(b"a", 1))
        conn.answer_sized(started.requests[0], 4)
        self.assertFalse(conn.time_out())
        conn.start_drain()
        conn.data_to_send()
        self.assertFalse(conn.must_close)
        conn.answer_data(started.requests[0], b"abcd")
        conn.answer_end(started.requests[0])
        conn.data_to_send()
        self.assertTrue(conn.must_close)


class Slow:
    """A streaming handler that takes a chunk only when the test says so."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.go: Deferred[None] | None = None
        self.error: Exception | None = None

    async def __call__(self, request: Any) -> bytes:
        try:
            async for chunk in request.body:
                self.chunks.append(chunk)
                self.go = Deferred()
                await self.go
        except BodyTruncated as e:
            self.error = e
            raise
        return b"%d" % sum(map(len, self.chunks))

    def step(self) -> None:
        go, self.go = self.go, None
        assert go is not None
        go.callback(None)


class ProtocolTests(SynchronousTestCase):
    """The Twisted adapter over an in-memory transport."""

    def setUp(self) -> None:
        self.clock = Clock()

    def connect(self, handler: Any, **kw: Any) -> tuple[HalfCloseTransport, Any]:
        self.factory = FrameServerFactory(handler, clock=self.clock, **kw)
        proto = self.factory.buildProtocol(None)
        transport = HalfCloseTransport(IPv4Address("TCP", "127.0.0.1", 40000))
        return transport.connect(proto), proto

    def answers(self, t: HalfCloseTransport) -> list[Any]:
        return split_frames(t.value())

    def test_factory_picks_the_streaming_protocol_and_max_payload_none(self) -> None:
        _, proto = self.connect(streaming_form(sha256), max_payload=None)
        self.assertIsInstance(proto, FrameStreamingProtocol)
        self.assertEqual(self.factory.max_payload, SPF1.max_payload)
        _, plain = self.connect(sha256)
        self.assertNotIsInstance(plain, FrameStreamingProtocol)
        self.assertRaises(ValueError, FrameServerFactory, echo, max_payload=None)

    def test_sha256_of_a_40_mib_frame_in_bounded_memory(self) -> None:
        t, proto = self.connect(streaming_form(sha256), max_payload=None)
        payload_hash = hashlib.sha256()
        size = 40 * MiB
        proto.dataReceived(SPF1.pack_header(size, kind=REQ, id=9))
        held = 0
        for i in range(40):
            chunk = bytes([i]) * MiB
            payload_hash.update(chunk)
            proto.dataReceived(chunk)
            held = max(held, proto._conn.hold.held)
        proto.dataReceived(frame(b"abc", 10))  # the next request on the same connection
        self.assertLessEqual(held, MiB)  # each read is taken at once: nothing piles up
        self.assertEqual(
            self.answers(t),
            [
                (Kind.RESPONSE, 9, payload_hash.hexdigest().encode() + b"\n"),
                (Kind.RESPONSE, 10, hashlib.sha256(b"abc").hexdigest().encode() + b"\n"),
            ],
        )
        self.assertEqual((self.factory.metrics.requests, self.factory.metrics.answers), (2, 2))

    def test_slow_handler_pauses_reading_then_resumes(self) -> None:
        handler = Slow()
        t, proto = self.connect(streaming(handler), max_payload=None)
        chunk = b"x" * (256 * 1024)
        total = 12
        proto.dataReceived(SPF1.pack_header(total * len(chunk), kind=REQ, id=1))
        sent = 0
        while t.producerState != "paused":  # a client sending as fast as it may
            proto.dataReceived(chunk)
            sent += 1
        self.assertLess(sent, total)
        self.assertEqual(self.factory.metrics.reads_paused, 1)
        self.assertLessEqual(proto._conn.hold.held, DEFAULT_HIGH_WATER + len(chunk))
        while t.producerState == "paused":
            handler.step()
        self.assertLessEqual(proto._conn.hold.held, 256 * 1024)
        for _ in range(total - sent):
            proto.dataReceived(chunk)
        while handler.go is not None:
            handler.step()
        self.assertEqual(self.answers(t), [(Kind.RESPONSE, 1, b"%d" % (total * len(chunk)))])

    def test_failure_mid_body_sends_error_4_after_the_frame_and_goes_on(self) -> None:
        @streaming
        async def failing(request: Any) -> bytes:
            async for chunk in request.body:
                if chunk.startswith(b"bad"):
                    raise RuntimeError("boom")
            return b"fine"

        t, proto = self.connect(failing)
        data = frame(b"bad" + b"x" * 1000, 1)
        proto.dataReceived(data[:100])
        self.assertEqual(t.value(), b"")  # not before the frame ends
        proto.dataReceived(data[100:] + frame(b"good", 2))
        (error, answer) = self.answers(t)
        self.assertEqual(error[:2], (Kind.ERROR, 1))
        self.assertEqual(decode_error(error[2])[0], ErrorCode.HANDLER_FAILED)
        self.assertEqual(answer, (Kind.RESPONSE, 2, b"fine"))
        self.assertFalse(t.aborted or t.closed_cleanly)
        self.flushLoggedErrors(RuntimeError)

    def test_stall_mid_body_resets_and_the_handler_sees_it(self) -> None:
        handler = Slow()
        t, proto = self.connect(streaming(handler), idle_timeout=5)
        proto.dataReceived(frame(b"x" * 1000, 1)[:300])
        handler.step()
        self.clock.advance(6)
        self.assertTrue(t.aborted)
        t.lose()
        self.assertEqual(self.factory.metrics.in_flight, 0)

    def test_truncated_body_raises_in_the_handler(self) -> None:
        handler = Slow()
        t, proto = self.connect(streaming(handler))
        proto.dataReceived(frame(b"x" * 1000, 1)[:300])
        handler.step()
        proto.readConnectionLost()  # the client half-closed mid-frame
        self.assertIsInstance(handler.error, BodyTruncated)
        self.assertEqual(t.value(), b"")
        self.flushLoggedErrors(BodyTruncated)

    def test_handler_timeout_counts_from_the_end_of_the_frame(self) -> None:
        handler = Slow()
        t, proto = self.connect(streaming(handler), handler_timeout=2)
        data = frame(b"x" * 1000, 4)
        proto.dataReceived(data[:300])
        self.clock.advance(10)  # the upload may take long: no handler timeout yet
        self.assertEqual(t.value(), b"")
        proto.dataReceived(data[300:])
        self.clock.advance(3)
        (error,) = self.answers(t)
        self.assertEqual(error[:2], (Kind.ERROR, 4))
        self.assertEqual(decode_error(error[2])[0], ErrorCode.TIMEOUT)
        self.assertEqual(self.factory.metrics.in_flight, 0)

    def test_async_iterator_answer_is_one_frame(self) -> None:
        @streaming
        async def chunks(request: Any) -> AsyncIterator[bytes]:
            await request.body.read()

            async def gen() -> AsyncIterator[bytes]:
                for part in (b"a", b"bc", b"def"):
                    yield part

            return gen()

        t, proto = self.connect(chunks)
        proto.dataReceived(frame(b"q", 3))
        self.assertEqual(self.answers(t), [(Kind.RESPONSE, 3, b"abcdef")])

    def test_without_ids_answers_keep_request_order(self) -> None:
        releases: list[Deferred[bytes]] = []

        @streaming
        def later(request: Any) -> Deferred[bytes]:
            d: Deferred[bytes] = Deferred()
            releases.append(d)
            return d

        t, proto = self.connect(later, header=INT32)
        proto.dataReceived(INT32.encode(b"one") + INT32.encode(b"two"))
        releases[1].callback(b"2")
        self.assertEqual(t.value(), b"")
        releases[0].callback(b"1")
        self.assertEqual(t.value(), INT32.encode(b"1") + INT32.encode(b"2"))


class TapTests(SynchronousTestCase):
    """``twistd sockproto-frame --max-payload``: none for a streaming handler only."""

    def factory(self, argv: list[str]) -> Any:
        o = tap.Options()
        o.parseOptions(argv)
        return next(iter(tap.build(o))).factory  # type: ignore[call-overload]

    def test_max_payload_none_streams_sha256(self) -> None:
        factory = self.factory(["--handler", "sha256", "--max-payload", "none"])
        self.assertIs(factory.handler, sha256_stream)
        self.assertIs(factory.protocol, FrameStreamingProtocol)
        self.assertEqual(factory.max_payload, SPF1.max_payload)

    def test_large_max_payload_streams_sha256_the_default_keeps_it_whole(self) -> None:
        self.assertIs(self.factory(["--handler", "sha256", "--max-payload", "1GiB"]).handler, sha256_stream)
        self.assertIs(self.factory(["--handler", "sha256"]).handler, sha256)

    def test_max_payload_none_refused_for_a_buffered_handler(self) -> None:
        for argv in (["--handler", "echo"], ["--handler", "sha256", "--threads", "2"]):
            error = str(
                self.assertRaises(UsageError, tap.Options().parseOptions, [*argv, "--max-payload", "none"])
            )
            self.assertIn("streaming handler", error)

    def test_a_streaming_handler_is_refused_with_threads(self) -> None:
        argv = ["--handler", "sockproto.handlers:sha256_stream", "--threads", "2"]
        error = str(self.assertRaises(UsageError, tap.Options().parseOptions, argv))
        self.assertIn("--threads", error)
        self.assertIn("streams", error)


class TestingHarnessTests(SynchronousTestCase):
    """Users test their streaming frame handlers with ``sockproto.testing.frame_pair``."""

    def test_frame_pair_serves_a_streaming_handler_in_pieces(self) -> None:
        pieces: list[int] = []

        @streaming
        async def sizes(request: Any) -> bytes:
            async for chunk in request.body:
                pieces.append(len(chunk))
            return b"%d pieces" % len(pieces)

        pair = frame_pair(sizes, max_payload=None, chunk_size=256 * 1024)  # reads as a socket gives them
        answer = self.successResultOf(pair.request(b"x" * (3 * MiB)))
        self.assertEqual(sum(pieces), 3 * MiB)
        self.assertEqual(max(pieces), 256 * 1024)  # one piece per read, never joined
        self.assertEqual(answer, b"%d pieces" % len(pieces))

    def test_behind_a_proxy_header_the_handler_sees_the_true_client(self) -> None:
        peers: list[Any] = []

        @streaming
        async def who(request: Any) -> bytes:
            peers.append(request.peer)
            return b"%d" % len(await request.body.read())

        factory = FrameServerFactory(who, max_payload=None, proxy=ProxySettings())
        client = Recorder()
        server = factory.buildProtocol(CLIENT_ADDRESS)
        conn = connect_protocols(server, client, client_address=CLIENT_ADDRESS, chunk_size=64 * 1024)
        header = encode_v2(("203.0.113.7", 40000), ("192.0.2.1", 8750))
        conn.client_transport.write(header + frame(b"q" * (1024 * 1024), 5))
        conn.flush()
        self.assertEqual(split_frames(client.received), [(Kind.RESPONSE, 5, b"1048576")])
        self.assertEqual((peers[0].host, peers[0].port), ("203.0.113.7", 40000))


class Recorder(Protocol):
    """A client that keeps what it receives."""

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class SizedAnswerProtocolTests(SynchronousTestCase):
    """A streaming frame handler answering with a SizedAnswer, in memory."""

    def setUp(self) -> None:
        self.clock = Clock()

    def test_a_slow_client_pauses_the_iterator(self) -> None:
        pulled = {"bytes": 0}
        block = b"a" * (64 * 1024)

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(128):  # 8 MiB
                pulled["bytes"] += len(block)
                yield block

        @streaming
        async def produce(request: Any) -> SizedAnswer:
            await request.body.read()
            return SizedAnswer(128 * len(block), chunks())

        pair = frame_pair(produce, write_buffer=256 * 1024)
        pair.connection.client_transport.pauseProducing()  # the client does not read
        answer = pair.request(b"go")
        pair.flush()
        self.assertLess(pulled["bytes"], 2 * MiB)  # held back by the full write buffer
        self.assertGreaterEqual(pair.server.settings.metrics.answers_paused, 1)
        pair.connection.client_transport.resumeProducing()
        pair.flush()
        self.assertEqual(self.successResultOf(answer), block * 128)
        self.assertEqual(self.successResultOf(pair.request(b"next")), block * 128)  # usable after

    def test_a_wrong_length_resets_the_connection(self) -> None:
        async def short() -> AsyncIterator[bytes]:
            yield b"only this"

        @streaming
        def liar(request: Any) -> SizedAnswer:
            return SizedAnswer(100, short())

        t, proto = ProtocolTests.connect(self, liar)  # type: ignore[arg-type]
        proto.dataReceived(frame(b"q", 1))
        self.assertTrue(t.aborted)
        self.flushLoggedErrors(ValueError)

"""sockproto.testing: frame builders and parsers, the in-memory frame pair, frame_exchange."""

from __future__ import annotations

from twisted.internet.address import IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core import INT16, INT32, SPF1, ErrorCode, Kind, encode_error
from sockproto.frame.client import RemoteError, RequestTimeout
from sockproto.frame.server import FrameServerFactory
from sockproto.handlers import echo
from sockproto.request import Request
from sockproto.testing import (
    AnswerFrame,
    build_error,
    build_frame,
    build_ping,
    build_request,
    frame_exchange,
    frame_pair,
    parse_error,
    parse_frames,
)


def upper(request: Request) -> bytes:
    if request.payload == b"fail":
        raise ValueError("asked to fail")
    return request.payload.upper()


class BuildersAndParsersTests(SynchronousTestCase):
    def test_request_bytes_match_the_spec_example(self) -> None:
        wire = bytes.fromhex("53 50 01 01 00 00 00 07 00 00 00 05 68 65 6c 6c 6f")
        self.assertEqual(build_request(b"hello", 7), wire)
        self.assertEqual(build_frame(b"hello", kind=Kind.REQUEST, id=7), wire)

    def test_round_trip_of_every_kind(self) -> None:
        data = b"".join(build_frame(b"p%d" % k, kind=k, id=k * 10) for k in Kind) + build_ping(b"", 99)
        frames = parse_frames(data)
        self.assertEqual(frames[:5], [AnswerFrame(k, k * 10, b"p%d" % k) for k in Kind])
        self.assertEqual(frames[5], (Kind.PING, 99, b""))
        self.assertIsInstance(frames[0].kind, Kind)

    def test_unknown_kind_kept_as_int(self) -> None:
        (frame,) = parse_frames(build_frame(b"", kind=42))
        self.assertEqual(frame.kind, 42)
        self.assertNotIsInstance(frame.kind, Kind)

    def test_headers_without_kind_or_id(self) -> None:
        data = build_request(b"one", header=INT32) + build_frame(b"two", kind=Kind.PING, id=5, header=INT32)
        self.assertEqual(data, b"\0\0\0\x03one\0\0\0\x03two")
        self.assertEqual(parse_frames(data, header=INT32), [(None, None, b"one"), (None, None, b"two")])

    def test_error_frames(self) -> None:
        (frame,) = parse_frames(build_error(ErrorCode.TOO_LARGE, "big", id=3))
        self.assertEqual((frame.kind, frame.id), (Kind.ERROR, 3))
        self.assertEqual(parse_error(frame.payload), (ErrorCode.TOO_LARGE, "big"))
        code, _ = parse_error(encode_error(999, "new"))
        self.assertEqual(code, 999)
        self.assertRaises(ValueError, parse_error, b"\x01")

    def test_incomplete_frame_refused(self) -> None:
        data = build_request(b"whole") + build_request(b"cut")[:-1]
        with self.assertRaises(ValueError) as info:
            parse_frames(data)
        self.assertIn("incomplete", str(info.exception))
        self.assertIn("14 bytes", str(info.exception))
        self.assertRaises(ValueError, parse_frames, b"SP\x01")

    def test_malformed_refused(self) -> None:
        with self.assertRaises(ValueError) as info:
            parse_frames(build_request(b"ok") + b"XX" + bytes(10))
        self.assertIn("after 1 frames", str(info.exception))

    def test_oversized_refused(self) -> None:
        self.assertRaises(ValueError, parse_frames, build_request(b"12345"), max_payload=4)

    def test_payload_too_large_for_header(self) -> None:
        self.assertRaises(ValueError, build_request, b"x" * 65536, header=INT16)


class FramePairTests(SynchronousTestCase):
    def test_sync_answer_ready_when_request_returns(self) -> None:
        pair = frame_pair(upper)
        self.assertEqual(self.successResultOf(pair.request(b"abc")), b"ABC")
        self.assertEqual(self.successResultOf(pair.ping(b"p")), b"p")

    def test_handler_failure_is_remote_error(self) -> None:
        pair = frame_pair(upper)
        failure = self.failureResultOf(pair.request(b"fail"), RemoteError)
        self.assertEqual(failure.value.code, ErrorCode.HANDLER_FAILED)
        self.assertIn("asked to fail", failure.value.message)
        self.flushLoggedErrors(ValueError)
        self.assertEqual(self.successResultOf(pair.request(b"next")), b"NEXT")

    def test_handler_sees_the_configured_peer(self) -> None:
        peers: list[object] = []

        def handler(request: Request) -> bytes:
            peers.append(request.peer)
            return b""

        peer = IPv6Address("TCP", "::ffff:10.1.2.3", 5555)
        self.successResultOf(frame_pair(handler, peer=peer).request(b""))
        self.assertEqual(str(peers[0]), "IPv4Address(type='TCP', host='10.1.2.3', port=5555)")

    def test_async_answer_after_flush(self) -> None:
        waiting: list[Deferred[bytes]] = []

        def handler(request: Request) -> Deferred[bytes]:
            d: Deferred[bytes] = Deferred()
            waiting.append(d)
            return d

        pair = frame_pair(handler)
        first, second = pair.request(b"1"), pair.request(b"2")
        self.assertNoResult(first)
        waiting[1].callback(b"two")
        pair.flush()
        self.assertEqual(self.successResultOf(second), b"two")
        self.assertNoResult(first)
        waiting[0].callback(b"one")
        pair.flush()
        self.assertEqual(self.successResultOf(first), b"one")

    def test_coroutine_handler(self) -> None:
        async def handler(request: Request) -> bytes:
            return request.payload * 2

        self.assertEqual(self.successResultOf(frame_pair(handler).request(b"ab")), b"abab")

    def test_client_timeout_on_the_pair_clock(self) -> None:
        pair = frame_pair(lambda request: Deferred())
        d = pair.request(b"x", timeout=2)
        assert isinstance(pair.clock, Clock)
        pair.clock.advance(1.9)
        self.assertNoResult(d)
        pair.clock.advance(0.2)
        self.failureResultOf(d, RequestTimeout)

    def test_server_stops_reading_at_max_in_flight(self) -> None:
        waiting: list[Deferred[bytes]] = []

        def handler(request: Request) -> Deferred[bytes]:
            d: Deferred[bytes] = Deferred()
            waiting.append(d)
            return d

        pair = frame_pair(handler, max_in_flight=2)
        answers = [pair.request(b"%d" % i) for i in range(5)]
        self.assertEqual(len(waiting), 2)
        self.assertFalse(pair.connection.server_transport.reading)
        waiting[0].callback(b"done")
        pair.flush()
        self.assertEqual(self.successResultOf(answers[0]), b"done")
        self.assertEqual(len(waiting), 3)

    def test_server_stops_reading_when_client_does_not_read(self) -> None:
        pair = frame_pair(lambda request: b"x" * 50_000, write_buffer=65536)
        pair.connection.client_transport.pauseProducing()
        for _ in range(4):
            pair.client.request(b"q")
        pair.flush()
        self.assertTrue(pair.connection.server_transport.producer_paused)
        self.assertFalse(pair.connection.server_transport.reading)
        pair.connection.client_transport.resumeProducing()
        pair.flush()
        self.assertEqual(pair.client.pending, 0)

    def test_int32_header_byte_by_byte(self) -> None:
        pair = frame_pair(upper, header=INT32, chunk_size=1)
        self.assertEqual(self.successResultOf(pair.request(b"slow")), b"SLOW")

    def test_given_factory_is_used(self) -> None:
        factory = FrameServerFactory(upper, header=INT16)
        pair = frame_pair(factory)
        self.assertIs(pair.server.factory, factory)
        self.assertEqual(pair.client.header, INT16)
        self.assertEqual(self.successResultOf(pair.request(b"x")), b"X")

    def test_close_fails_what_is_pending_as_tcp_does(self) -> None:
        seen: list[bytes] = []
        pair = frame_pair(lambda request: seen.append(request.payload) or b"late")
        pending = pair.client.request(b"sent, then the client closes")
        self.successResultOf(pair.close())
        self.assertTrue(pair.connection.closed)
        self.assertEqual(seen, [b"sent, then the client closes"])  # delivered before the close
        self.failureResultOf(pending, ConnectionDone)  # the answer came to a closed socket


class FrameExchangeTests(SynchronousTestCase):
    def test_answers_in_order(self) -> None:
        data = build_request(b"a", 1) + build_ping(b"b", 2) + build_request(b"c", 3)
        self.assertEqual(
            frame_exchange(upper, data),
            [(Kind.RESPONSE, 1, b"A"), (Kind.PONG, 2, b"b"), (Kind.RESPONSE, 3, b"C")],
        )

    def test_unexpected_kind_and_oversized(self) -> None:
        data = (
            build_frame(b"x", kind=Kind.RESPONSE, id=4) + build_request(b"12345", 5) + build_request(b"ok", 6)
        )
        answers = frame_exchange(echo, data, max_payload=4, chunk_size=3)
        self.assertEqual(
            [(a.kind, a.id) for a in answers], [(Kind.ERROR, 4), (Kind.ERROR, 5), (Kind.RESPONSE, 6)]
        )
        self.assertEqual(parse_error(answers[0].payload)[0], ErrorCode.UNEXPECTED_KIND)
        self.assertEqual(parse_error(answers[1].payload)[0], ErrorCode.TOO_LARGE)

    def test_bad_magic_gets_protocol_error_with_id_zero(self) -> None:
        (answer,) = frame_exchange(echo, b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual((answer.kind, answer.id), (Kind.ERROR, 0))
        self.assertEqual(parse_error(answer.payload)[0], ErrorCode.PROTOCOL_ERROR)

    def test_spec_header_default_is_spf1(self) -> None:
        self.assertEqual(frame_exchange(echo, build_request(b"x", header=SPF1)), [(Kind.RESPONSE, 1, b"x")])

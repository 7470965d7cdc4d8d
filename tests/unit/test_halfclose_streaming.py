"""Streaming half-close handlers: the body in chunks, backpressure both ways, limits, failures."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core.halfclose import HalfCloseStateError, ResetReason, State
from sockproto.core.halfclose_stream import DEFAULT_HIGH_WATER, StreamingRequest
from sockproto.core.spf1 import ErrorCode
from sockproto.core.units import parse_size_or_none
from sockproto.halfclose.server import HalfCloseServerFactory, HalfCloseServerProtocol
from sockproto.halfclose.streaming import HalfCloseStreamingProtocol
from sockproto.handlers import echo, sha256, sha256_stream
from sockproto.serving.streaming import SizedAnswer, is_streaming, streaming, streaming_form
from sockproto.tap import halfclose as tap
from sockproto.testing import HalfCloseTransport

MiB = 1024 * 1024


class CoreTests(SynchronousTestCase):
    """The sans-IO rules: a bounded FIFO that says when to pause and resume."""

    def test_pause_past_high_water_resume_at_low_water(self) -> None:
        r = StreamingRequest(None, high_water=10, low_water=4)
        for _ in range(3):
            self.assertTrue(r.receive_data(b"abcd"))
        self.assertTrue(r.pause_wanted())
        self.assertFalse(r.pause_wanted())  # said once
        self.assertEqual(r.take(), b"abcd")
        self.assertFalse(r.resume_wanted())  # 8 held
        self.assertEqual(r.take(), b"abcd")
        self.assertTrue(r.resume_wanted())
        self.assertEqual(r.held, 4)

    def test_limit_counts_every_byte_and_none_has_none(self) -> None:
        r = StreamingRequest(5)
        self.assertTrue(r.receive_data(b"abc"))
        self.assertFalse(r.receive_data(b"def"))
        self.assertIs(r.reason, ResetReason.TOO_LARGE)
        self.assertEqual(r.held, 0)
        unlimited = StreamingRequest(None)
        self.assertTrue(unlimited.receive_data(b"x" * (8 * MiB)))

    def test_early_answer_drops_the_rest_until_eof(self) -> None:
        r = StreamingRequest(10)
        r.receive_data(b"abc")
        r.answer(b"")
        self.assertEqual((r.state, r.held), (State.ANSWERED, 0))
        self.assertTrue(r.receive_data(b"defg"))  # counted, not held
        self.assertEqual((r.received, r.held), (7, 0))
        self.assertFalse(r.receive_data(b"x" * 4))  # the limit holds after an answer too
        r.eof_received()
        self.assertTrue(r.eof)
        self.assertRaises(HalfCloseStateError, r.eof_received)

    def test_eof_then_taken_is_ended(self) -> None:
        r = StreamingRequest(None)
        r.receive_data(b"a")
        r.eof_received()
        self.assertEqual(r.state, State.COMPLETE)
        self.assertFalse(r.ended)
        r.take()
        self.assertTrue(r.ended)


class Slow:
    """A streaming handler that takes chunks only when the test says so."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.go: Deferred[None] | None = None
        self.ended = False

    async def __call__(self, request: Any) -> bytes:
        async for chunk in request.body:
            self.chunks.append(chunk)
            self.go = Deferred()
            await self.go
        self.ended = True
        return b"%d\n" % sum(map(len, self.chunks))

    def step(self) -> None:
        go, self.go = self.go, None
        assert go is not None
        go.callback(None)


class ProtocolCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def connect(self, handler: Any, **kw: Any) -> tuple[HalfCloseTransport, Any]:
        self.factory = HalfCloseServerFactory(handler, clock=self.clock, **kw)
        proto = self.factory.buildProtocol(None)
        transport = HalfCloseTransport(IPv4Address("TCP", "127.0.0.1", 40000))
        return transport.connect(proto), proto


class StreamingProtocolTests(ProtocolCase):
    def test_factory_picks_the_streaming_protocol(self) -> None:
        _, proto = self.connect(streaming_form(sha256), max_request=None)
        self.assertIsInstance(proto, HalfCloseStreamingProtocol)
        _, plain = self.connect(sha256)
        self.assertNotIsInstance(plain, HalfCloseStreamingProtocol)
        self.assertIsInstance(plain, HalfCloseServerProtocol)

    def test_max_request_none_needs_a_streaming_handler(self) -> None:
        self.assertRaises(ValueError, HalfCloseServerFactory, echo, max_request=None)
        self.assertTrue(is_streaming(streaming_form(sha256)))
        self.assertIs(streaming_form(echo), echo)

    def test_chunks_reach_the_handler_before_eof(self) -> None:
        handler = Slow()
        t, proto = self.connect(streaming(handler), max_request=None)
        proto.dataReceived(b"abc")
        self.assertEqual(handler.chunks, [b"abc"])  # the handler runs while the body arrives
        proto.dataReceived(b"de")
        handler.step()
        self.assertEqual(handler.chunks, [b"abc", b"de"])
        t.peer_half_close()
        handler.step()
        self.assertTrue(handler.ended)
        self.assertEqual(t.value(), b"5\n")
        self.assertTrue(t.closed_cleanly)
        self.assertEqual((self.factory.metrics.answers, self.factory.metrics.in_flight), (1, 0))

    def test_slow_handler_pauses_reading_then_resumes(self) -> None:
        handler = Slow()
        t, proto = self.connect(streaming(handler), max_request=None)
        chunk = b"x" * (256 * 1024)
        for _ in range(DEFAULT_HIGH_WATER // len(chunk) + 2):
            proto.dataReceived(chunk)
        self.assertEqual(t.producerState, "paused")
        self.assertEqual(self.factory.metrics.reads_paused, 1)
        self.assertLessEqual(proto.exchange.held, DEFAULT_HIGH_WATER + len(chunk))
        while t.producerState == "paused":
            handler.step()
        self.assertLessEqual(proto.exchange.held, 256 * 1024)

    def test_sha256_stream_digest_and_no_limit(self) -> None:
        t, proto = self.connect(streaming_form(sha256), max_request=None)
        whole = hashlib.sha256()
        for i in range(40):  # 40 MiB, over the buffered default of 1 MiB
            chunk = bytes([i]) * MiB
            whole.update(chunk)
            proto.dataReceived(chunk)
        t.peer_half_close()
        self.assertEqual(t.value(), whole.hexdigest().encode() + b"\n")

    def test_limit_resets_a_streamed_request(self) -> None:
        t, proto = self.connect(streaming_form(sha256), max_request=10)
        proto.dataReceived(b"x" * 11)
        self.assertTrue(t.aborted)
        self.assertEqual(self.factory.metrics.errors[ErrorCode.TOO_LARGE], 1)

    def test_stall_mid_body_times_out(self) -> None:
        handler = Slow()
        t, proto = self.connect(streaming(handler), max_request=None, request_timeout=5)
        proto.dataReceived(b"abc")
        self.clock.advance(6)
        self.assertTrue(t.aborted)
        self.assertEqual(self.factory.metrics.errors[ErrorCode.TIMEOUT], 1)
        t.lose()
        self.assertEqual(self.factory.metrics.in_flight, 0)  # the handler was cancelled

    def test_failure_mid_stream_resets(self) -> None:
        @streaming
        async def failing(request: Any) -> bytes:
            async for _ in request.body:
                raise RuntimeError("boom")
            return b""

        t, proto = self.connect(failing, max_request=None)
        proto.dataReceived(b"abc")
        self.assertTrue(t.aborted)
        self.assertEqual(t.value(), b"")
        self.assertEqual(self.factory.metrics.errors[ErrorCode.HANDLER_FAILED], 1)
        self.flushLoggedErrors(RuntimeError)

    def test_handler_timeout_counts_from_the_half_close(self) -> None:
        handler = Slow()
        t, proto = self.connect(streaming(handler), max_request=None, handler_timeout=2)
        proto.dataReceived(b"abc")
        self.clock.advance(10)  # the upload may take long: no handler timeout yet
        self.assertFalse(t.aborted)
        t.peer_half_close()
        self.clock.advance(3)
        self.assertTrue(t.aborted)
        self.assertEqual(self.factory.metrics.errors[ErrorCode.TIMEOUT], 1)

    def test_a_sized_answer_is_streamed_as_its_chunks(self) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"ab"
            yield b"c"

        @streaming
        def sized(request: Any) -> SizedAnswer:
            return SizedAnswer(3, chunks())

        t, _ = self.connect(sized, max_request=None)
        t.peer_half_close()
        self.assertEqual(t.value(), b"abc")
        self.assertTrue(t.closed_cleanly)

    def test_answer_iterator_waits_for_the_transport(self) -> None:
        pulled: list[int] = []

        @streaming
        async def big(request: Any) -> AsyncIterator[bytes]:
            await request.body.read()
            return chunks()

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(5):
                pulled.append(i)
                yield b"%d" % i

        t, _ = self.connect(big, max_request=None)
        t.peer_half_close()
        self.assertEqual(pulled, [0, 1, 2, 3, 4])
        self.assertEqual(t.value(), b"01234")
        self.assertTrue(t.closed_cleanly)

        pulled.clear()
        t2, _ = self.connect(big, max_request=None)
        original = t2.write

        def write_and_pause(data: bytes) -> None:  # a full socket buffer after each chunk
            original(data)
            t2.producer.pauseProducing()

        t2.write = write_and_pause  # type: ignore[method-assign]
        t2.peer_half_close()
        self.assertEqual(pulled, [0])  # the next chunk waits for room
        self.assertEqual(self.factory.metrics.answers_paused, 1)
        t2.producer.resumeProducing()
        self.assertEqual(pulled, [0, 1])
        for _ in range(4):
            t2.producer.resumeProducing()
        self.assertEqual(t2.value(), b"01234")
        self.assertTrue(t2.closed_cleanly)

    def test_early_answer_closes_after_the_body(self) -> None:
        t, proto = self.connect(streaming(lambda request: b"early\n"), max_request=None)
        proto.dataReceived(b"abc")
        self.assertEqual(t.value(), b"early\n")
        self.assertFalse(t.disconnecting)  # a close with unread bytes would be a reset
        t.peer_half_close()
        self.assertTrue(t.closed_cleanly)


class TapTests(SynchronousTestCase):
    def test_max_request_none(self) -> None:
        self.assertIsNone(parse_size_or_none("None"))
        self.assertEqual(parse_size_or_none("2GiB"), 2 * 1024**3)
        o = tap.Options()
        o.parseOptions(["--handler", "sha256", "--max-request", "none"])
        self.assertIsNone(o["max-request"])
        service = tap.build(o)
        factory = next(iter(service)).factory  # type: ignore[call-overload]
        self.assertIs(factory.handler, sha256_stream)
        self.assertIs(factory.protocol, HalfCloseStreamingProtocol)

    def test_max_request_none_refused_for_a_buffered_handler(self) -> None:
        for argv in (["--handler", "echo"], ["--handler", "sha256", "--threads", "2"]):
            error = str(
                self.assertRaises(UsageError, tap.Options().parseOptions, [*argv, "--max-request", "none"])
            )
            self.assertIn("streaming handler", error)

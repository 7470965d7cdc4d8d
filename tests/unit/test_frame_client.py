"""The frame client protocol, driven through an in-memory transport."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core import INT32, SPF1, ErrorCode, Frame, FrameDecoder, HeaderSpec, Kind, encode_error
from sockproto.frame.client import (
    AnswerTooLarge,
    FrameClientFactory,
    FrameClientProtocol,
    FrameProtocolError,
    RemoteError,
    RequestTimeout,
)

REQ, RESP, ERR, PING, PONG = (int(k) for k in Kind)


class Client:
    def __init__(self, header: HeaderSpec = SPF1, **kw: Any) -> None:
        self.clock = Clock()
        self.proto = FrameClientProtocol(header, clock=self.clock, **kw)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.header = header

    def sent(self) -> list[tuple[int | None, int | None, bytes]]:
        d: FrameDecoder[Frame] = FrameDecoder(self.header)
        out = []
        for e in d.feed(self.transport.value()):
            assert isinstance(e, Frame)
            out.append((e.kind, e.id, e.payload))
        return out

    def receive(self, payload: bytes, kind: int = RESP, ident: int = 1) -> None:
        if self.header.has_kind:
            self.proto.dataReceived(self.header.encode(payload, kind=kind, id=ident))
        else:
            self.proto.dataReceived(self.header.encode(payload))


def result(d: Deferred[Any]) -> list[Any]:
    box: list[Any] = []
    d.addBoth(box.append)
    return box


class RequestTests(SynchronousTestCase):
    def test_request_is_framed_with_fresh_ids(self) -> None:
        c = Client()
        c.proto.request(b"one")
        c.proto.request(b"two")
        self.assertEqual(c.sent(), [(REQ, 1, b"one"), (REQ, 2, b"two")])
        self.assertEqual(c.proto.pending, 2)

    def test_answers_matched_by_id_in_any_order(self) -> None:
        c = Client()
        first, second = result(c.proto.request(b"a")), result(c.proto.request(b"b"))
        c.receive(b"B", ident=2)
        self.assertEqual((first, second), ([], [b"B"]))
        c.receive(b"A", ident=1)
        self.assertEqual(first, [b"A"])
        self.assertEqual(c.proto.pending, 0)

    def test_error_answer_fails_with_remote_error(self) -> None:
        c = Client()
        box = result(c.proto.request(b"a"))
        c.receive(encode_error(ErrorCode.HANDLER_FAILED, "boom"), ERR, 1)
        (failure,) = box
        self.assertIsInstance(failure, Failure)
        err = failure.value
        self.assertIsInstance(err, RemoteError)
        self.assertEqual((err.code, err.message), (ErrorCode.HANDLER_FAILED, "boom"))
        self.assertIn("HANDLER_FAILED", str(err))

    def test_unknown_error_code_is_kept(self) -> None:
        c = Client()
        box = result(c.proto.request(b"a"))
        c.receive(encode_error(999, "odd"), ERR, 1)
        self.assertEqual(box[0].value.code, 999)

    def test_connection_error_fails_every_request(self) -> None:
        c = Client()
        boxes = [result(c.proto.request(b"%d" % i)) for i in range(3)]
        c.receive(encode_error(ErrorCode.PROTOCOL_ERROR, "bad magic"), ERR, 0)
        for box in boxes:
            self.assertIsInstance(box[0].value, RemoteError)
        self.assertEqual(c.proto.pending, 0)

    def test_ping(self) -> None:
        c = Client()
        box = result(c.proto.ping(b"hi"))
        self.assertEqual(c.sent(), [(PING, 1, b"hi")])
        c.receive(b"hi", PONG, 1)
        self.assertEqual(box, [b"hi"])

    def test_ping_needs_a_kind_field(self) -> None:
        self.assertRaises(ValueError, Client(INT32).proto.ping)

    def test_late_or_unknown_answers_are_ignored(self) -> None:
        c = Client()
        c.receive(b"stray", ident=42)
        box = result(c.proto.request(b"a"))
        c.receive(b"A", ident=1)
        self.assertEqual(box, [b"A"])

    def test_payload_too_large_for_header(self) -> None:
        c = Client(HeaderSpec("tiny", "length:B"))
        box = result(c.proto.request(b"x" * 256))
        self.assertEqual(box[0].type.__name__, "PayloadTooLarge")
        self.assertEqual(c.transport.value(), b"")

    def test_oversized_answer_fails_that_request_only(self) -> None:
        c = Client(max_payload=4)
        big, small = result(c.proto.request(b"a")), result(c.proto.request(b"b"))
        c.receive(b"too long", ident=1)
        c.receive(b"ok", ident=2)
        self.assertIsInstance(big[0].value, AnswerTooLarge)
        self.assertEqual(small, [b"ok"])

    def test_malformed_stream_fails_everything_and_aborts(self) -> None:
        c = Client()
        box = result(c.proto.request(b"a"))
        c.proto.dataReceived(b"HTTP/1.1 400")
        self.assertIsInstance(box[0].value, FrameProtocolError)
        self.assertTrue(c.transport.disconnecting)


class OrderedTests(SynchronousTestCase):
    def test_answers_matched_in_order(self) -> None:
        c = Client(INT32)
        boxes = [result(c.proto.request(b"%d" % i)) for i in range(3)]
        self.assertEqual([p for _, _, p in c.sent()], [b"0", b"1", b"2"])
        for i in range(3):
            c.receive(b"A%d" % i)
        self.assertEqual(boxes, [[b"A0"], [b"A1"], [b"A2"]])

    def test_timed_out_request_keeps_its_place(self) -> None:
        c = Client(INT32)
        first = result(c.proto.request(b"slow", timeout=1))
        second = result(c.proto.request(b"fast"))
        c.clock.advance(1)
        self.assertIsInstance(first[0].value, RequestTimeout)
        c.receive(b"late answer to slow")
        c.receive(b"FAST")
        self.assertEqual(second, [b"FAST"])


class LifecycleTests(SynchronousTestCase):
    def test_timeout(self) -> None:
        c = Client()
        box = result(c.proto.request(b"a", timeout=2.5))
        c.clock.advance(2)
        self.assertEqual(box, [])
        c.clock.advance(1)
        self.assertIsInstance(box[0].value, RequestTimeout)
        self.assertEqual(c.proto.pending, 0)
        c.receive(b"late", ident=1)  # ignored
        self.assertEqual(c.clock.getDelayedCalls(), [])

    def test_answer_cancels_timer(self) -> None:
        c = Client()
        box = result(c.proto.request(b"a", timeout=5))
        c.receive(b"A", ident=1)
        self.assertEqual(box, [b"A"])
        self.assertEqual(c.clock.getDelayedCalls(), [])

    def test_cancel_forgets_request(self) -> None:
        c = Client()
        d = c.proto.request(b"a", timeout=5)
        box = result(d)
        d.cancel()
        self.assertIsInstance(box[0].value, CancelledError)
        self.assertEqual(c.proto.pending, 0)
        self.assertEqual(c.clock.getDelayedCalls(), [])

    def test_connection_lost_fails_pending_with_reason(self) -> None:
        c = Client()
        boxes = [result(c.proto.request(b"a")), result(c.proto.request(b"b", timeout=3))]
        c.proto.connectionLost(Failure(ConnectionLost("gone")))
        for box in boxes:
            self.assertIsInstance(box[0].value, ConnectionLost)
        after = result(c.proto.request(b"c"))
        self.assertIsInstance(after[0].value, ConnectionLost)
        self.assertEqual(c.clock.getDelayedCalls(), [])

    def test_close_and_when_closed(self) -> None:
        c = Client()
        closed = result(c.proto.close())
        self.assertTrue(c.transport.disconnecting)
        self.assertEqual(closed, [])
        c.proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(closed, [None])
        self.assertEqual(result(c.proto.when_closed()), [None])

    def test_ids_skip_zero_and_ids_in_use(self) -> None:
        c = Client()
        c.proto._next_id = 2**32 - 1
        c.proto.request(b"last")
        c.proto.request(b"wrapped")
        self.assertEqual([i for _, i, _ in c.sent()], [2**32 - 1, 1])
        c.proto._next_id = 1
        c.proto.request(b"skips 1")
        self.assertEqual(c.sent()[-1][1], 2)

    def test_factory(self) -> None:
        factory = FrameClientFactory(INT32, max_payload=7)
        proto = factory.buildProtocol(None)
        self.assertIsInstance(proto, FrameClientProtocol)
        self.assertIs(proto.header, INT32)
        self.assertEqual(proto._decoder.max_payload, 7)

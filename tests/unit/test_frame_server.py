"""The frame server protocol, driven through an in-memory transport."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core import INT16, INT32, SPF1, ErrorCode, Frame, FrameDecoder, HeaderSpec, Kind, decode_error
from sockproto.frame.server import FrameServerFactory, FrameServerProtocol
from sockproto.handlers import echo
from sockproto.request import Request

REQ, RESP, ERR, PING, PONG = (int(k) for k in Kind)


class RecordingTransport(StringTransport):
    """A StringTransport that counts write calls."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


def frame(payload: bytes, kind: int = REQ, ident: int = 1) -> bytes:
    return SPF1.encode(payload, kind=kind, id=ident)


class Connection:
    """One server protocol connected to a recording transport."""

    def __init__(self, handler: Any = echo, header: HeaderSpec = SPF1, **kw: Any) -> None:
        self.header = header
        self.transport = RecordingTransport(peerAddress=kw.pop("peer", IPv4Address("TCP", "127.0.0.1", 4242)))
        self.factory = FrameServerFactory(handler, header=header, **kw)
        self.proto = self.factory.buildProtocol(None)
        self.proto.makeConnection(self.transport)
        self._decoder: FrameDecoder[Frame] = FrameDecoder(header, max_payload=2**32)
        self._seen = 0

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def answers(self) -> list[tuple[int | None, int | None, bytes]]:
        """The answer frames written since the last call."""
        data = self.transport.value()[self._seen :]
        self._seen += len(data)
        out = []
        for e in self._decoder.feed(data):
            assert isinstance(e, Frame), e
            out.append((e.kind, e.id, e.payload))
        return out

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    @property
    def reading(self) -> bool:
        return self.transport.producerState == "producing"


def error(code: ErrorCode, ident: int) -> tuple[int, int, ErrorCode]:
    return (ERR, ident, code)


def errors(answers: list[tuple[int | None, int | None, bytes]]) -> list[tuple[Any, ...]]:
    return [(k, i, ErrorCode(decode_error(p)[0])) if k == ERR else (k, i, p) for k, i, p in answers]


class RequestResponseTests(SynchronousTestCase):
    def test_request_gets_response_with_same_id(self) -> None:
        c = Connection()
        c.send(frame(b"hello", ident=77))
        self.assertEqual(c.answers(), [(RESP, 77, b"hello")])
        self.assertFalse(c.closed)

    def test_answers_of_one_read_in_one_write(self) -> None:
        c = Connection()
        c.send(b"".join(frame(b"x%d" % i, ident=i) for i in range(50)))
        self.assertEqual(c.transport.writes, 1)
        self.assertEqual(c.answers(), [(RESP, i, b"x%d" % i) for i in range(50)])

    def test_handler_sees_request(self) -> None:
        seen: list[Request] = []

        def handler(request: Request) -> bytes:
            seen.append(request)
            return b"ok"

        c = Connection(handler)
        c.send(frame(b"abc", ident=5))
        (r,) = seen
        self.assertEqual((r.payload, r.id, r.kind), (b"abc", 5, REQ))
        self.assertEqual(r.peer, IPv4Address("TCP", "127.0.0.1", 4242))
        self.assertEqual(r.fields["length"], 3)

    def test_ipv4_mapped_peer_is_plain_ipv4(self) -> None:
        seen: list[Any] = []
        c = Connection(lambda r: seen.append(r.peer) or b"", peer=IPv6Address("TCP", "::ffff:127.0.0.1", 9))
        c.send(frame(b""))
        self.assertEqual(seen, [IPv4Address("TCP", "127.0.0.1", 9)])

    def test_ping_gets_pong_without_handler(self) -> None:
        calls: list[Request] = []
        c = Connection(lambda r: calls.append(r) or b"")
        c.send(frame(b"are you there", PING, 9))
        self.assertEqual(c.answers(), [(PONG, 9, b"are you there")])
        self.assertEqual(calls, [])

    def test_async_answers_come_out_of_order(self) -> None:
        pending: dict[bytes, Deferred[bytes]] = {}

        def handler(request: Request) -> Deferred[bytes]:
            pending[request.payload] = d = Deferred()
            return d

        c = Connection(handler)
        c.send(frame(b"a", ident=1) + frame(b"b", ident=2))
        self.assertEqual(c.answers(), [])
        pending[b"b"].callback(b"B")
        pending[b"a"].callback(b"A")
        self.assertEqual(c.answers(), [(RESP, 2, b"B"), (RESP, 1, b"A")])

    def test_coroutine_handler(self) -> None:
        gate: Deferred[None] = Deferred()

        async def handler(request: Request) -> bytes:
            await gate
            return request.payload[::-1]

        c = Connection(handler)
        c.send(frame(b"abc", ident=3))
        self.assertEqual(c.answers(), [])
        gate.callback(None)
        self.assertEqual(c.answers(), [(RESP, 3, b"cba")])

    def test_already_fired_deferred_keeps_batch_order(self) -> None:
        c = Connection(lambda r: succeed(r.payload) if r.payload == b"d" else r.payload, header=INT32)
        c.send(INT32.encode(b"s1") + INT32.encode(b"d") + INT32.encode(b"s2"))
        self.assertEqual([p for _, _, p in c.answers()], [b"s1", b"d", b"s2"])
        self.assertEqual(c.transport.writes, 1)

    def test_bytes_like_answers_are_accepted(self) -> None:
        c = Connection(lambda r: bytearray(b"ba"))
        c.send(frame(b""))
        self.assertEqual(c.answers(), [(RESP, 1, b"ba")])


class ErrorTests(SynchronousTestCase):
    def test_unexpected_kinds_get_error_3_and_connection_goes_on(self) -> None:
        c = Connection()
        c.send(frame(b"x", RESP, 1) + frame(b"y", ERR, 2) + frame(b"z", PONG, 3) + frame(b"w", 99, 4))
        c.send(frame(b"ok", REQ, 5))
        self.assertEqual(
            errors(c.answers()),
            [error(ErrorCode.UNEXPECTED_KIND, i) for i in (1, 2, 3, 4)] + [(RESP, 5, b"ok")],
        )
        self.assertFalse(c.closed)

    def test_oversized_gets_error_2_before_payload(self) -> None:
        c = Connection(max_payload=10)
        big = frame(b"z" * 5000, ident=8)
        c.send(big[:12])  # the header only
        self.assertEqual(errors(c.answers()), [error(ErrorCode.TOO_LARGE, 8)])
        c.send(big[12:] + frame(b"small", ident=9))
        self.assertEqual(c.answers(), [(RESP, 9, b"small")])
        self.assertFalse(c.closed)

    def test_oversized_and_wrong_kind_gets_error_2(self) -> None:
        c = Connection(max_payload=1)
        c.send(frame(b"zz", PONG, 4))
        self.assertEqual(errors(c.answers()), [error(ErrorCode.TOO_LARGE, 4)])

    def test_handler_exception_gets_error_4_without_traceback(self) -> None:
        def handler(request: Request) -> bytes:
            if request.payload == b"bad":
                raise ValueError("no good")
            return b"fine"

        c = Connection(handler)
        c.send(frame(b"bad", ident=1) + frame(b"good", ident=2))
        (kind, ident, payload), second = c.answers()
        self.assertEqual((kind, ident), (ERR, 1))
        code, message = decode_error(payload)
        self.assertEqual(code, ErrorCode.HANDLER_FAILED)
        self.assertIn("ValueError: no good", message)
        self.assertNotIn("Traceback", message)
        self.assertEqual(second, (RESP, 2, b"fine"))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_async_failure_gets_error_4(self) -> None:
        d: Deferred[bytes] = Deferred()
        c = Connection(lambda r: d)
        c.send(frame(b"", ident=6))
        d.errback(KeyError("k"))
        self.assertEqual(errors(c.answers()), [error(ErrorCode.HANDLER_FAILED, 6)])
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_wrong_result_type_gets_error_4(self) -> None:
        c = Connection(lambda r: "text, not bytes")
        c.send(frame(b"", ident=2))
        self.assertEqual(errors(c.answers()), [error(ErrorCode.HANDLER_FAILED, 2)])
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_answer_too_large_for_header_gets_error_2(self) -> None:
        small = HeaderSpec("small", "kind:B id:H length:H")
        c = Connection(lambda r: b"x" * 70000, header=small)
        c.send(small.encode(b"", kind=REQ, id=3))
        self.assertEqual(errors(c.answers()), [error(ErrorCode.TOO_LARGE, 3)])
        self.assertFalse(c.closed)

    def test_wrong_magic_gets_error_1_then_close(self) -> None:
        c = Connection()
        c.send(frame(b"first", ident=1) + b"XX\x01\x01" + bytes(8) + frame(b"never", ident=2))
        self.assertEqual(errors(c.answers()), [(RESP, 1, b"first"), error(ErrorCode.PROTOCOL_ERROR, 0)])
        self.assertTrue(c.closed)
        c.send(frame(b"after", ident=3))  # ignored once closing
        self.assertEqual(c.answers(), [])

    def test_wrong_version_gets_error_1(self) -> None:
        c = Connection()
        c.send(b"SP\x07\x01" + bytes(8))
        self.assertEqual(errors(c.answers()), [error(ErrorCode.PROTOCOL_ERROR, 0)])
        self.assertTrue(c.closed)

    def test_foreign_protocol_refused_at_first_bytes(self) -> None:
        c = Connection()
        c.send(b"GET")
        self.assertEqual(errors(c.answers()), [error(ErrorCode.PROTOCOL_ERROR, 0)])
        self.assertTrue(c.closed)


class OrderedTests(SynchronousTestCase):
    """Headers without id: answers in request order, no error channel."""

    def test_answers_follow_request_order(self) -> None:
        pending: dict[bytes, Deferred[bytes]] = {}

        def handler(request: Request) -> Any:
            if request.payload.startswith(b"slow"):
                pending[request.payload] = d = Deferred()
                return d
            return request.payload

        c = Connection(handler, header=INT32)
        c.send(b"".join(INT32.encode(p) for p in (b"slow1", b"fast", b"slow2", b"fast2")))
        self.assertEqual(c.answers(), [])
        self.assertEqual(c.proto.in_flight, 4)
        pending[b"slow2"].callback(b"S2")
        self.assertEqual(c.answers(), [])
        pending[b"slow1"].callback(b"S1")
        self.assertEqual([p for _, _, p in c.answers()], [b"S1", b"fast", b"S2", b"fast2"])
        self.assertEqual(c.proto.in_flight, 0)

    def test_oversized_closes_after_due_answers(self) -> None:
        d: Deferred[bytes] = Deferred()
        c = Connection(lambda r: d if r.payload == b"slow" else r.payload, header=INT32, max_payload=8)
        c.send(INT32.encode(b"slow") + INT32.encode(b"fast") + INT32.encode(b"x" * 9) + INT32.encode(b"late"))
        self.assertEqual(c.answers(), [])
        self.assertFalse(c.closed)
        self.assertFalse(c.reading)
        d.callback(b"SLOW")
        self.assertEqual([p for _, _, p in c.answers()], [b"SLOW", b"fast"])
        self.assertTrue(c.closed)

    def test_failed_handler_closes_after_due_answers(self) -> None:
        c = Connection(lambda r: 1 / 0 if r.payload == b"boom" else r.payload, header=INT16)
        c.send(INT16.encode(b"a") + INT16.encode(b"boom") + INT16.encode(b"b"))
        self.assertEqual([p for _, _, p in c.answers()], [b"a"])
        self.assertTrue(c.closed)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_failed_async_handler_closes_after_earlier_answers(self) -> None:
        d1: Deferred[bytes] = Deferred()
        d2: Deferred[bytes] = Deferred()
        handlers = iter([d1, d2])
        c = Connection(lambda r: next(handlers), header=INT32)
        c.send(INT32.encode(b"1") + INT32.encode(b"2"))
        d2.errback(RuntimeError("late failure"))
        self.assertFalse(c.closed)
        d1.callback(b"one")
        self.assertEqual([p for _, _, p in c.answers()], [b"one"])
        self.assertTrue(c.closed)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_answer_too_large_for_header_closes(self) -> None:
        c = Connection(lambda r: b"x" * 70000, header=INT16)
        c.send(INT16.encode(b"q"))
        self.assertEqual(c.answers(), [])
        self.assertTrue(c.closed)


class FlowControlTests(SynchronousTestCase):
    def test_max_in_flight_pauses_reading(self) -> None:
        pending: list[Deferred[bytes]] = []

        def handler(request: Request) -> Deferred[bytes]:
            pending.append(Deferred())
            return pending[-1]

        c = Connection(handler, max_in_flight=3)
        c.send(b"".join(frame(b"%d" % i, ident=i) for i in range(1, 6)))
        self.assertEqual(len(pending), 3)  # the other two wait, unhandled
        self.assertFalse(c.reading)
        c.send(frame(b"6", ident=6))  # a read already under way still gets queued
        self.assertEqual(len(pending), 3)
        pending[0].callback(b"one")
        self.assertEqual(c.answers(), [(RESP, 1, b"one")])
        self.assertEqual(len(pending), 4)
        self.assertFalse(c.reading)
        for d in pending[1:4]:
            d.callback(b"x")
        self.assertEqual(len(pending), 6)
        for d in pending[4:]:
            d.callback(b"y")
        self.assertTrue(c.reading)
        self.assertEqual(sorted(i for _, i, _ in c.answers()), [2, 3, 4, 5, 6])

    def test_sync_handlers_never_count_as_in_flight(self) -> None:
        c = Connection(max_in_flight=1)
        c.send(b"".join(frame(b"p", ident=i) for i in range(100)))
        self.assertEqual(len(c.answers()), 100)
        self.assertTrue(c.reading)

    def test_full_write_buffer_stops_reading(self) -> None:
        c = Connection()
        c.proto.pauseProducing()  # what the transport does when its buffer is full
        self.assertFalse(c.reading)
        c.send(frame(b"held", ident=1))
        self.assertEqual(c.answers(), [])
        c.proto.resumeProducing()
        self.assertEqual(c.answers(), [(RESP, 1, b"held")])
        self.assertTrue(c.reading)

    def test_registered_as_streaming_producer(self) -> None:
        c = Connection()
        self.assertIs(c.transport.producer, c.proto)
        self.assertTrue(c.transport.streaming)

    def test_connection_lost_cancels_pending_handlers(self) -> None:
        d: Deferred[bytes] = Deferred()
        cancelled: list[bool] = []
        d.addErrback(lambda f: cancelled.append(True))
        c = Connection(lambda r: d)
        c.send(frame(b""))
        c.proto.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(cancelled, [True])
        self.assertEqual(c.answers(), [])


class FactoryTests(SynchronousTestCase):
    def test_builds_configured_protocols(self) -> None:
        factory = FrameServerFactory(echo, header=INT16, max_payload=10**9, max_in_flight=5)
        proto = factory.buildProtocol(None)
        self.assertIsInstance(proto, FrameServerProtocol)
        self.assertIs(proto.factory, factory)
        self.assertEqual(factory.max_payload, 65535)
        self.assertEqual(proto.max_in_flight, 5)

    def test_refuses_bad_configuration(self) -> None:
        self.assertRaises(ValueError, FrameServerFactory, echo, max_in_flight=0)
        self.assertRaises(ValueError, FrameServerFactory, echo, max_payload=-1)

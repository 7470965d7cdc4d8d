"""The datagram client: retransmission with backoff, matching by id, ICMP refusal, raw mode."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, MessageLengthError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core.datagram import HEADER_SIZE, SERVER_KINDS, encode_datagram, parse_datagram
from sockproto.core.decoder import Frame
from sockproto.core.header import PayloadTooLarge
from sockproto.core.spf1 import ErrorCode, Kind, encode_error
from sockproto.datagram.client import DatagramClientProtocol, PortUnreachable, RemoteError, RequestTimeout

from .datagram_fakes import FakeUDPTransport


def sent(datagram: bytes) -> tuple[int, int, bytes]:
    frame = parse_datagram(datagram, SERVER_KINDS)
    assert isinstance(frame, Frame), frame
    assert frame.kind is not None and frame.id is not None
    return frame.kind, frame.id, frame.payload


class ClientCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def client(self, **kw: Any) -> tuple[FakeUDPTransport, DatagramClientProtocol]:
        kw.setdefault("interval", 1.0)
        proto = DatagramClientProtocol(clock=self.clock, **kw)
        transport = FakeUDPTransport().attach(proto)
        return transport, proto

    def answer(self, proto: DatagramClientProtocol, kind: int, ident: int, payload: bytes) -> None:
        proto.datagramReceived(encode_datagram(kind, ident, payload), ("127.0.0.1", 8751))


class RequestTests(ClientCase):
    def test_request_and_response(self) -> None:
        transport, proto = self.client()
        d = proto.request(b"hello")
        [(datagram, addr)] = transport.written
        self.assertIsNone(addr)  # a connected socket
        kind, ident, payload = sent(datagram)
        self.assertEqual((kind, payload), (Kind.REQUEST, b"hello"))
        self.assertEqual(proto.pending, 1)
        self.answer(proto, Kind.RESPONSE, ident, b"world")
        self.assertEqual(self.successResultOf(d), b"world")
        self.assertEqual(proto.pending, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answers_matched_by_id_in_any_order(self) -> None:
        transport, proto = self.client()
        first, second = proto.request(b"1"), proto.request(b"2")
        ids = [sent(d)[1] for d in transport.datagrams()]
        self.assertEqual(len(set(ids)), 2)
        self.answer(proto, Kind.RESPONSE, ids[1], b"two")
        self.answer(proto, Kind.RESPONSE, ids[0], b"one")
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), (b"one", b"two"))

    def test_late_duplicates_and_strangers_are_ignored(self) -> None:
        transport, proto = self.client()
        d = proto.request(b"q")
        ident = sent(transport.datagrams()[0])[1]
        self.answer(proto, Kind.RESPONSE, ident, b"first")
        self.answer(proto, Kind.RESPONSE, ident, b"duplicate")
        self.answer(proto, Kind.RESPONSE, ident + 100, b"unknown id")
        proto.datagramReceived(b"junk", ("127.0.0.1", 8751))
        self.assertEqual(self.successResultOf(d), b"first")
        self.assertEqual(proto.ignored, 3)

    def test_answer_of_the_wrong_kind_is_ignored(self) -> None:
        transport, proto = self.client()
        d = proto.request(b"q")
        ident = sent(transport.datagrams()[0])[1]
        self.answer(proto, Kind.PONG, ident, b"")
        self.assertNoResult(d)
        self.answer(proto, Kind.RESPONSE, ident, b"ok")
        self.assertEqual(self.successResultOf(d), b"ok")

    def test_error_answer(self) -> None:
        transport, proto = self.client()
        d = proto.request(b"q")
        ident = sent(transport.datagrams()[0])[1]
        self.answer(proto, Kind.ERROR, ident, encode_error(ErrorCode.TOO_LARGE, "big"))
        error = self.failureResultOf(d, RemoteError).value
        self.assertEqual((error.code, error.message), (ErrorCode.TOO_LARGE, "big"))

    def test_ping(self) -> None:
        transport, proto = self.client()
        d = proto.ping(b"p")
        kind, ident, payload = sent(transport.datagrams()[0])
        self.assertEqual((kind, payload), (Kind.PING, b"p"))
        self.answer(proto, Kind.RESPONSE, ident, b"p")  # not a PONG: ignored
        self.answer(proto, Kind.PONG, ident, b"p")
        self.assertEqual(self.successResultOf(d), b"p")

    def test_ids_skip_those_in_use(self) -> None:
        transport, proto = self.client()
        proto._next_id = 2**32 - 1
        proto.request(b"a")
        proto.request(b"b")
        proto._next_id = 1
        proto.request(b"c")
        self.assertEqual([sent(d)[1] for d in transport.datagrams()], [2**32 - 1, 1, 2])

    def test_payload_too_large(self) -> None:
        transport, proto = self.client(max_datagram=100)
        self.failureResultOf(proto.request(b"x" * (101 - HEADER_SIZE)), PayloadTooLarge)
        self.assertEqual(transport.written, [])
        proto.request(b"x" * (100 - HEADER_SIZE))
        self.assertEqual(len(transport.written[0][0]), 100)

    def test_write_error_fails_the_request(self) -> None:
        transport, proto = self.client()
        transport.fail_with = MessageLengthError()
        self.failureResultOf(proto.request(b"q"), MessageLengthError)
        self.assertEqual((proto.pending, self.clock.getDelayedCalls()), (0, []))


class RetransmissionTests(ClientCase):
    def test_exponential_backoff_then_timeout(self) -> None:
        transport, proto = self.client(interval=0.5, retries=10)
        d = proto.request(b"q", timeout=5)
        times = [0.0]
        for _ in range(60):
            count = len(transport.written)
            self.clock.advance(0.125)
            if len(transport.written) > count:
                times.append(self.clock.seconds())
        # Sent at 0, then after 0.5, 1, 2 more seconds (0.5, 1.5, 3.5); 7.5 is past the timeout.
        self.assertEqual(times, [0.0, 0.5, 1.5, 3.5])
        self.assertEqual(len({d for d, _ in transport.written}), 1)  # the same datagram each time
        self.assertIn("4 copies", str(self.failureResultOf(d, RequestTimeout).value))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_retries_bound_the_copies(self) -> None:
        transport, proto = self.client(interval=0.1)
        d = proto.request(b"q", timeout=100, retries=2)
        self.clock.pump([1.0] * 100)
        self.assertEqual(len(transport.written), 3)
        self.failureResultOf(d, RequestTimeout)

    def test_no_retries(self) -> None:
        transport, proto = self.client()
        d = proto.request(b"q", timeout=3, retries=0)
        self.clock.advance(2.9)
        self.assertEqual(len(transport.written), 1)
        self.clock.advance(0.1)
        self.assertIn("1 copy", str(self.failureResultOf(d, RequestTimeout).value))

    def test_answer_stops_retransmission(self) -> None:
        transport, proto = self.client()
        d = proto.request(b"q")
        self.clock.advance(1.0)
        self.assertEqual(len(transport.written), 2)
        self.answer(proto, Kind.RESPONSE, sent(transport.datagrams()[0])[1], b"ok")
        self.clock.advance(100)
        self.assertEqual(len(transport.written), 2)
        self.assertEqual(self.successResultOf(d), b"ok")
        self.assertEqual(proto.sent, 2)

    def test_answer_after_timeout_is_ignored(self) -> None:
        transport, proto = self.client(timeout=1)
        d = proto.request(b"q")
        self.clock.advance(1)
        self.failureResultOf(d, RequestTimeout)
        self.answer(proto, Kind.RESPONSE, sent(transport.datagrams()[0])[1], b"late")
        self.assertEqual(proto.ignored, 1)

    def test_cancel_forgets_the_request(self) -> None:
        transport, proto = self.client()
        d = proto.request(b"q")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual((proto.pending, self.clock.getDelayedCalls()), (0, []))
        self.clock.advance(10)
        self.assertEqual(len(transport.written), 1)


class RefusalTests(ClientCase):
    def test_icmp_refusal_fails_every_request_at_once(self) -> None:
        _, proto = self.client()
        first, second = proto.request(b"1", timeout=60), proto.ping(timeout=60)
        proto.connectionRefused()
        self.failureResultOf(first, PortUnreachable)
        self.failureResultOf(second, PortUnreachable)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # The client is still usable: the server may come up.
        self.assertNoResult(proto.request(b"again"))

    def test_refusal_reported_during_the_write(self) -> None:
        transport, proto = self.client()

        def refuse(datagram: bytes, addr: Any = None) -> None:
            proto.connectionRefused()  # what Twisted's connected write does on ECONNREFUSED

        transport.write = refuse  # type: ignore[method-assign]
        self.failureResultOf(proto.request(b"q"), PortUnreachable)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_fails_what_waits(self) -> None:
        transport, proto = self.client()
        d = proto.request(b"q")
        self.successResultOf(proto.close())
        self.failureResultOf(d, ConnectionDone)
        self.assertTrue(transport.stopped)
        self.failureResultOf(proto.request(b"after"), ConnectionDone)


class RawModeTests(ClientCase):
    def test_one_request_at_a_time(self) -> None:
        transport, proto = self.client(mode="raw")
        first, second = proto.request(b"one"), proto.request(b"two")
        self.assertEqual(transport.written, [(b"one", None)])
        proto.datagramReceived(b"ONE", ("127.0.0.1", 8751))
        self.assertEqual(self.successResultOf(first), b"ONE")
        self.assertEqual(transport.written, [(b"one", None), (b"two", None)])
        proto.datagramReceived(b"TWO", ("127.0.0.1", 8751))
        self.assertEqual(self.successResultOf(second), b"TWO")

    def test_late_duplicate_with_nothing_pending_is_ignored(self) -> None:
        _, proto = self.client(mode="raw")
        d = proto.request(b"q")
        proto.datagramReceived(b"answer", ("127.0.0.1", 8751))
        proto.datagramReceived(b"answer again", ("127.0.0.1", 8751))
        self.assertEqual((self.successResultOf(d), proto.ignored), (b"answer", 1))

    def test_timeout_lets_the_next_one_go(self) -> None:
        transport, proto = self.client(mode="raw", timeout=2, retries=0)
        first, second = proto.request(b"one"), proto.request(b"two")
        self.clock.advance(2)
        self.failureResultOf(first, RequestTimeout)
        self.assertEqual(transport.datagrams(), [b"one", b"two"])
        self.assertNoResult(second)

    def test_cancel_while_waiting_its_turn(self) -> None:
        transport, proto = self.client(mode="raw")
        first, second = proto.request(b"one"), proto.request(b"two")
        second.cancel()
        self.failureResultOf(second, CancelledError)
        proto.datagramReceived(b"ONE", ("127.0.0.1", 8751))
        self.successResultOf(first)
        self.assertEqual(transport.datagrams(), [b"one"])

    def test_retransmits_the_bare_payload(self) -> None:
        transport, proto = self.client(mode="raw", interval=1)
        proto.request(b"q")
        self.clock.advance(1)
        self.assertEqual(transport.datagrams(), [b"q", b"q"])

    def test_no_ping_in_raw_mode(self) -> None:
        _, proto = self.client(mode="raw")
        self.assertRaises(ValueError, proto.ping)

    def test_raw_payload_limit(self) -> None:
        _, proto = self.client(mode="raw", max_datagram=10)
        self.failureResultOf(proto.request(b"x" * 11), PayloadTooLarge)


class SettingsTests(SynchronousTestCase):
    def test_bad_settings(self) -> None:
        self.assertRaises(ValueError, DatagramClientProtocol, mode="json")
        self.assertRaises(ValueError, DatagramClientProtocol, interval=0)

    def test_not_connected(self) -> None:
        d: Deferred[bytes] = DatagramClientProtocol().request(b"q")
        self.failureResultOf(d, ConnectionDone)

"""The datagram server protocol and factory, driven through an in-memory UDP transport."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import MessageLengthError
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core.datagram import (
    CLIENT_KINDS,
    HEADER_SIZE,
    MAX_UDP_PAYLOAD,
    DropReason,
    encode_datagram,
    parse_datagram,
)
from sockproto.core.decoder import Frame
from sockproto.core.spf1 import ErrorCode, Kind, decode_error
from sockproto.datagram.server import DatagramServerFactory, DatagramServerProtocol
from sockproto.handlers import echo
from sockproto.request import Request

from .datagram_fakes import FakeUDPTransport

PEER = ("127.0.0.1", 40000)


class Recorder:
    """A handler that keeps its requests and answers with ``answer(request)``."""

    def __init__(self, answer: Any = echo) -> None:
        self.requests: list[Request] = []
        self.answer = answer

    def __call__(self, request: Request) -> Any:
        self.requests.append(request)
        return self.answer(request)


def request(payload: bytes, ident: int = 1, kind: int = Kind.REQUEST) -> bytes:
    return encode_datagram(kind, ident, payload)


def decode(datagram: bytes) -> tuple[int, int, bytes]:
    frame = parse_datagram(datagram, CLIENT_KINDS)
    assert isinstance(frame, Frame), frame
    assert frame.kind is not None and frame.id is not None
    return frame.kind, frame.id, frame.payload


class ServerCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.patch(DatagramServerProtocol, "_log", Logger(observer=self.events.append))

    def serve(self, handler: Any = echo, **kw: Any) -> tuple[FakeUDPTransport, DatagramServerProtocol]:
        self.factory = DatagramServerFactory(handler, clock=self.clock, **kw)
        proto = self.factory.buildProtocol(None)
        return FakeUDPTransport().attach(proto), proto

    def logged(self, level: LogLevel) -> list[dict[str, Any]]:
        return [e for e in self.events if e["log_level"] is level]


class SPF1Tests(ServerCase):
    def test_request_gets_response_to_the_sender(self) -> None:
        handler = Recorder()
        transport, proto = self.serve(handler)
        proto.datagramReceived(request(b"hello", 7), PEER)
        [(reply, addr)] = transport.written
        self.assertEqual(addr, PEER)
        self.assertEqual(decode(reply), (Kind.RESPONSE, 7, b"hello"))
        [req] = handler.requests
        self.assertEqual((req.kind, req.id, req.payload), (Kind.REQUEST, 7, b"hello"))
        self.assertEqual(req.peer, IPv4Address("UDP", "127.0.0.1", 40000))
        stats = self.factory.stats
        self.assertEqual((stats.received, stats.handled, stats.replied, stats.dropped), (1, 1, 1, 0))

    def test_ping_gets_pong_without_the_handler(self) -> None:
        handler = Recorder()
        transport, proto = self.serve(handler)
        proto.datagramReceived(request(b"are you there", 3, Kind.PING), PEER)
        self.assertEqual(decode(transport.datagrams()[0]), (Kind.PONG, 3, b"are you there"))
        self.assertEqual(handler.requests, [])

    def test_invalid_datagrams_are_dropped_without_reply_and_counted(self) -> None:
        handler = Recorder()
        transport, proto = self.serve(handler)
        cases = {
            b"SP": DropReason.TOO_SHORT,
            request(b"hello")[:-1]: DropReason.TRUNCATED,
            request(b"hello") + b"!": DropReason.TRAILING,
            b"XX" + request(b"hello")[2:]: DropReason.FOREIGN,
            request(b"hello", kind=Kind.RESPONSE): DropReason.UNEXPECTED_KIND,
            request(b"", kind=Kind.ERROR): DropReason.UNEXPECTED_KIND,
            request(b"", kind=Kind.PONG): DropReason.UNEXPECTED_KIND,
            request(b"", kind=77): DropReason.UNEXPECTED_KIND,
        }
        for datagram in cases:
            proto.datagramReceived(datagram, PEER)
        self.assertEqual(transport.written, [])
        self.assertEqual(handler.requests, [])
        drops = self.factory.stats.drops
        self.assertEqual(drops[DropReason.TOO_SHORT], 1)
        self.assertEqual(drops[DropReason.TRUNCATED], 1)
        self.assertEqual(drops[DropReason.TRAILING], 1)
        self.assertEqual(drops[DropReason.FOREIGN], 1)
        self.assertEqual(drops[DropReason.UNEXPECTED_KIND], 4)
        self.assertEqual(self.factory.stats.dropped, len(cases))
        # Still serving.
        proto.datagramReceived(request(b"ok"), PEER)
        self.assertEqual(decode(transport.datagrams()[0]), (Kind.RESPONSE, 1, b"ok"))

    def test_handler_exception_is_error_4(self) -> None:
        def boom(request: Request) -> bytes:
            raise KeyError("no such thing")

        transport, proto = self.serve(boom)
        proto.datagramReceived(request(b"x", 9), PEER)
        kind, ident, payload = decode(transport.datagrams()[0])
        self.assertEqual((kind, ident), (Kind.ERROR, 9))
        code, message = decode_error(payload)
        self.assertEqual(code, ErrorCode.HANDLER_FAILED)
        self.assertIn("KeyError", message)
        self.assertEqual(len(self.logged(LogLevel.critical)), 1)

    def test_wrong_answer_type_is_error_4(self) -> None:
        transport, proto = self.serve(lambda r: "text")
        proto.datagramReceived(request(b"x", 2), PEER)
        kind, _, payload = decode(transport.datagrams()[0])
        self.assertEqual((kind, decode_error(payload)[0]), (Kind.ERROR, ErrorCode.HANDLER_FAILED))
        self.assertIn("str", decode_error(payload)[1])

    def test_answer_too_big_for_a_datagram_is_error_2(self) -> None:
        limit = MAX_UDP_PAYLOAD - HEADER_SIZE
        transport, proto = self.serve(lambda r: b"x" * int(r.payload))
        proto.datagramReceived(request(str(limit).encode(), 1), PEER)
        proto.datagramReceived(request(str(limit + 1).encode(), 2), PEER)
        first, second = transport.datagrams()
        self.assertEqual(len(first), MAX_UDP_PAYLOAD)
        self.assertEqual(decode(first)[:2], (Kind.RESPONSE, 1))
        kind, ident, payload = decode(second)
        self.assertEqual((kind, ident, decode_error(payload)[0]), (Kind.ERROR, 2, ErrorCode.TOO_LARGE))
        self.assertEqual(len(self.logged(LogLevel.error)), 1)

    def test_lower_configured_maximum(self) -> None:
        transport, proto = self.serve(max_datagram=100)
        proto.datagramReceived(request(b"x" * 88, 1), PEER)
        proto.datagramReceived(request(b"x" * 89, 2), PEER)
        proto.datagramReceived(request(b"x" * 89, 3, Kind.PING), PEER)
        ok, too_big, pong_too_big = transport.datagrams()
        self.assertEqual(len(ok), 100)
        for datagram in (too_big, pong_too_big):
            self.assertLessEqual(len(datagram), 100)
            kind, _, payload = decode(datagram)
            self.assertEqual((kind, decode_error(payload)[0]), (Kind.ERROR, ErrorCode.TOO_LARGE))

    def test_deferred_and_coroutine_answers(self) -> None:
        waiting: list[Deferred[bytes]] = []

        async def later(request: Request) -> bytes:
            waiting.append(Deferred())
            return request.payload + await waiting[-1]

        transport, proto = self.serve(later)
        proto.datagramReceived(request(b"a", 1), PEER)
        proto.datagramReceived(request(b"b", 2), PEER)
        self.assertEqual((transport.written, proto.pending), ([], 2))
        for d in reversed(waiting):
            d.callback(b"!")
        replies = sorted(decode(d) for d in transport.datagrams())
        self.assertEqual(replies, [(Kind.RESPONSE, 1, b"a!"), (Kind.RESPONSE, 2, b"b!")])
        self.assertEqual(proto.pending, 0)

    def test_failed_deferred_is_error_4(self) -> None:
        d: Deferred[bytes] = Deferred()
        transport, proto = self.serve(lambda r: d)
        proto.datagramReceived(request(b"x", 4), PEER)
        d.errback(ValueError("late failure"))
        kind, ident, payload = decode(transport.datagrams()[0])
        self.assertEqual((kind, ident, decode_error(payload)[0]), (Kind.ERROR, 4, ErrorCode.HANDLER_FAILED))

    def test_slow_handler_does_not_block_other_peers(self) -> None:
        slow: Deferred[bytes] = Deferred()
        transport, proto = self.serve(lambda r: slow if r.payload == b"slow" else r.payload)
        proto.datagramReceived(request(b"slow", 1), PEER)
        proto.datagramReceived(request(b"fast", 1), ("127.0.0.2", 5))
        self.assertEqual(transport.written, [(encode_datagram(Kind.RESPONSE, 1, b"fast"), ("127.0.0.2", 5))])
        slow.callback(b"done")
        self.assertEqual(transport.written[1], (encode_datagram(Kind.RESPONSE, 1, b"done"), PEER))


class RetransmissionTests(ServerCase):
    def test_repeat_is_answered_from_the_cache(self) -> None:
        calls = Recorder(lambda r: b"answer %d" % len(calls.requests))
        transport, proto = self.serve(calls)
        for _ in range(3):
            proto.datagramReceived(request(b"q", 5), PEER)
        self.assertEqual(len(calls.requests), 1)
        self.assertEqual(transport.datagrams(), [encode_datagram(Kind.RESPONSE, 5, b"answer 1")] * 3)
        self.assertEqual(self.factory.stats.from_cache, 2)

    def test_new_id_or_other_peer_runs_the_handler(self) -> None:
        calls = Recorder()
        _, proto = self.serve(calls)
        proto.datagramReceived(request(b"q", 5), PEER)
        proto.datagramReceived(request(b"q", 6), PEER)
        proto.datagramReceived(request(b"q", 5), ("127.0.0.1", 40001))
        self.assertEqual(len(calls.requests), 3)

    def test_errors_are_cached_too(self) -> None:
        calls = Recorder(lambda r: 1 / 0)
        transport, proto = self.serve(calls)
        proto.datagramReceived(request(b"q", 5), PEER)
        proto.datagramReceived(request(b"q", 5), PEER)
        self.assertEqual(len(calls.requests), 1)
        first, second = transport.datagrams()
        self.assertEqual(first, second)

    def test_repeat_while_running_is_dropped(self) -> None:
        d: Deferred[bytes] = Deferred()
        calls = Recorder(lambda r: d)
        transport, proto = self.serve(calls)
        proto.datagramReceived(request(b"q", 5), PEER)
        proto.datagramReceived(request(b"q", 5), PEER)
        self.assertEqual((len(calls.requests), transport.written), (1, []))
        self.assertEqual(self.factory.stats.drops[DropReason.IN_PROGRESS], 1)
        d.callback(b"late")
        proto.datagramReceived(request(b"q", 5), PEER)  # after it: from the cache
        self.assertEqual(transport.datagrams(), [encode_datagram(Kind.RESPONSE, 5, b"late")] * 2)
        self.assertEqual(len(calls.requests), 1)

    def test_cache_age_bound(self) -> None:
        calls = Recorder()
        _, proto = self.serve(calls, cache_age=10)
        proto.datagramReceived(request(b"q", 5), PEER)
        self.clock.advance(5)
        proto.datagramReceived(request(b"q", 5), PEER)
        self.assertEqual(len(calls.requests), 1)
        self.clock.advance(6)
        proto.datagramReceived(request(b"q", 5), PEER)
        self.assertEqual(len(calls.requests), 2)

    def test_cache_entry_bound(self) -> None:
        calls = Recorder()
        _, proto = self.serve(calls, cache_entries=2)
        for ident in (1, 2, 3, 1):
            proto.datagramReceived(request(b"q", ident), PEER)
        self.assertEqual(len(calls.requests), 4)  # id 1 was evicted by id 3
        self.assertEqual(len(proto.cache), 2)

    def test_overloaded(self) -> None:
        pending: list[Deferred[bytes]] = []

        def hold(request: Request) -> Deferred[bytes]:
            pending.append(Deferred())
            return pending[-1]

        _, proto = self.serve(hold, max_pending=2)
        for ident in range(1, 4):
            proto.datagramReceived(request(b"q", ident), PEER)
        self.assertEqual((len(pending), self.factory.stats.drops[DropReason.OVERLOADED]), (2, 1))
        pending[0].callback(b"done")
        proto.datagramReceived(request(b"q", 3), PEER)
        self.assertEqual(len(pending), 3)


class RawModeTests(ServerCase):
    def test_payload_in_answer_out(self) -> None:
        handler = Recorder(lambda r: r.payload.upper())
        transport, proto = self.serve(handler, mode="raw")
        proto.datagramReceived(b"SP\x01 not a header here", PEER)
        self.assertEqual(transport.written, [(b"SP\x01 NOT A HEADER HERE", PEER)])
        [req] = handler.requests
        self.assertEqual((req.kind, req.id, req.header, req.spec), (None, None, (), None))

    def test_every_datagram_runs_the_handler(self) -> None:
        handler = Recorder()
        transport, proto = self.serve(handler, mode="raw")
        proto.datagramReceived(b"same", PEER)
        proto.datagramReceived(b"same", PEER)
        self.assertEqual(len(handler.requests), 2)
        self.assertEqual(len(transport.written), 2)

    def test_answer_too_big_is_dropped_logged_and_counted(self) -> None:
        transport, proto = self.serve(lambda r: b"x" * (MAX_UDP_PAYLOAD + 1), mode="raw")
        proto.datagramReceived(b"q", PEER)
        self.assertEqual(transport.written, [])
        self.assertEqual(self.factory.stats.drops[DropReason.ANSWER_TOO_LARGE], 1)
        self.assertEqual(len(self.logged(LogLevel.error)), 1)

    def test_largest_answer(self) -> None:
        transport, proto = self.serve(lambda r: b"x" * MAX_UDP_PAYLOAD, mode="raw")
        proto.datagramReceived(b"q", PEER)
        self.assertEqual(len(transport.datagrams()[0]), MAX_UDP_PAYLOAD)

    def test_failed_handler_is_dropped_logged_and_counted(self) -> None:
        d: Deferred[bytes] = Deferred()
        answers = iter([lambda: 1 / 0, lambda: "not bytes", lambda: d])
        transport, proto = self.serve(lambda r: next(answers)(), mode="raw")
        for _ in range(3):
            proto.datagramReceived(b"q", PEER)
        d.errback(RuntimeError("async failure"))
        self.assertEqual(transport.written, [])
        self.assertEqual(self.factory.stats.drops[DropReason.HANDLER_FAILED], 3)
        self.assertEqual(len(self.logged(LogLevel.critical)), 3)

    def test_async_answer(self) -> None:
        transport, proto = self.serve(lambda r: succeed(bytearray(b"ba")), mode="raw")
        proto.datagramReceived(b"q", PEER)
        self.assertEqual(transport.written, [(b"ba", PEER)])


class PeerTests(ServerCase):
    def test_ipv4_mapped_peer_is_plain_ipv4_but_the_reply_keeps_the_socket_address(self) -> None:
        handler = Recorder()
        transport, proto = self.serve(handler)
        mapped = ("::ffff:127.0.0.1", 4000)
        proto.datagramReceived(request(b"v4 over v6", 1), mapped)
        self.assertEqual(handler.requests[0].peer, IPv4Address("UDP", "127.0.0.1", 4000))
        self.assertEqual(transport.written[0][1], mapped)

    def test_ipv6_peer(self) -> None:
        handler = Recorder()
        transport, proto = self.serve(handler, mode="raw")
        proto.datagramReceived(b"v6", ("::1", 4000))
        self.assertEqual(handler.requests[0].peer, IPv6Address("UDP", "::1", 4000))
        self.assertEqual(transport.written, [(b"v6", ("::1", 4000))])

    def test_peer_memory_is_bounded(self) -> None:
        _, proto = self.serve(mode="raw")
        for port in range(10_000):
            proto.datagramReceived(b"q", ("127.0.0.1", port))
        self.assertLessEqual(len(proto._peers), 4096)


class LifecycleTests(ServerCase):
    def test_send_failure_is_counted_not_raised(self) -> None:
        for mode in ("spf1", "raw"):
            transport, proto = self.serve(mode=mode)
            transport.fail_with = OSError(11, "Resource temporarily unavailable")
            proto.datagramReceived(request(b"q"), PEER)
            transport.fail_with = MessageLengthError()
            proto.datagramReceived(request(b"q", 2), PEER)
            self.assertEqual(self.factory.stats.drops[DropReason.SEND_FAILED], 2, mode)
            self.assertEqual(self.factory.stats.replied, 0)

    def test_stop_cancels_pending_handlers_and_sends_nothing(self) -> None:
        d: Deferred[bytes] = Deferred()
        transport, proto = self.serve(lambda r: d)
        proto.datagramReceived(request(b"q"), PEER)
        self.assertIn(proto, self.factory.protocols)
        transport.stopListening()
        self.assertTrue(d.called)
        self.assertEqual(transport.written, [])
        self.assertNotIn(proto, self.factory.protocols)
        self.assertEqual((proto.pending, len(proto.cache)), (0, 0))

    def test_one_factory_several_sockets_share_stats_not_caches(self) -> None:
        calls = Recorder()
        factory = DatagramServerFactory(calls, clock=self.clock)
        first, second = factory.buildProtocol(None), factory.buildProtocol(None)
        FakeUDPTransport().attach(first)
        FakeUDPTransport().attach(second)
        first.datagramReceived(request(b"q", 1), PEER)
        second.datagramReceived(request(b"q", 1), PEER)
        self.assertEqual(len(calls.requests), 2)
        self.assertEqual(factory.stats.received, 2)
        self.assertEqual(factory.protocols, {first, second})
        self.assertIsNot(first.cache, second.cache)

    def test_bad_settings(self) -> None:
        for kw in ({"mode": "json"}, {"max_datagram": 63}, {"max_datagram": 65508}, {"max_pending": 0}):
            self.assertRaises(ValueError, DatagramServerFactory, echo, **kw)
        self.assertRaises(ValueError, DatagramServerFactory, echo, cache_entries=-1)

    def test_stats(self) -> None:
        _, proto = self.serve()
        proto.datagramReceived(b"junk", PEER)
        proto.datagramReceived(request(b"q"), PEER)
        proto.datagramReceived(request(b"q"), PEER)
        counts = self.factory.stats.as_dict()
        self.assertEqual(counts["received"], 3)
        self.assertEqual(counts["from_cache"], 1)
        self.assertEqual(counts["dropped"], 1)
        self.assertEqual(counts["dropped_too_short"], 1)
        self.assertIn("too_short=1", repr(self.factory.stats))

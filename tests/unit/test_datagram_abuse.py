"""Datagram server: rate limit, amplification guard and cookies, handler timeout, drain, metrics."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core.datagram import CLIENT_KINDS, DropReason, encode_datagram, parse_datagram
from sockproto.core.datagram_guard import SourceRateLimit, SourceVerifier
from sockproto.core.decoder import Frame
from sockproto.core.spf1 import ErrorCode, Kind, decode_error
from sockproto.datagram.client import DatagramClientProtocol
from sockproto.datagram.protocol import DatagramServerProtocol
from sockproto.datagram.server import DatagramServerFactory
from sockproto.testing.datagram import FakeDatagramTransport

SPOOFED = ("203.0.113.9", 5353)
LOCAL = ("127.0.0.1", 40000)
BIG = b"B" * 600


def answer(datagram: bytes) -> Frame:
    frame = parse_datagram(datagram, CLIENT_KINDS)
    assert isinstance(frame, Frame), frame
    return frame


def big_or_echo(request: Any) -> bytes:
    return BIG if request.payload == b"big" else request.payload


class Case(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.patch(DatagramServerProtocol, "_log", Logger(observer=self.events.append))

    def serve(
        self, handler: Any = big_or_echo, **kw: Any
    ) -> tuple[FakeDatagramTransport, DatagramServerFactory]:
        kw.setdefault("trusted", ())
        factory = DatagramServerFactory(handler, clock=self.clock, **kw)
        return FakeDatagramTransport().attach(factory.buildProtocol(None)), factory

    def logged(self, category: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("sockproto_event") == category]


class RateLimitTests(Case):
    def test_token_buckets(self) -> None:
        limit = SourceRateLimit(2, clock=self.clock)
        self.assertEqual([limit.allow("a") for _ in range(3)], [True, True, False])
        self.assertTrue(limit.allow("b"))
        self.clock.advance(0.5)
        self.assertEqual([limit.allow("a"), limit.allow("a")], [True, False])

    def test_bounded_table_keeps_the_active_sources(self) -> None:
        limit = SourceRateLimit(1, clock=self.clock, max_sources=3)
        limit.allow("abuser")
        for n in range(10):
            limit.allow(f"spoofed-{n}")
            self.assertFalse(limit.allow("abuser"))  # still known, still empty
            self.assertLessEqual(len(limit), 3)

    def test_server_drops_and_counts_over_the_rate(self) -> None:
        port, factory = self.serve(rate_limit=2)
        request = encode_datagram(Kind.REQUEST, 1, b"x")
        replies = [port.receive(request, SPOOFED) for _ in range(3)]
        self.assertEqual([len(r) for r in replies], [1, 1, 0])
        self.assertEqual(len(port.receive(request, LOCAL)), 1)  # another source
        self.assertEqual(factory.stats.drops[DropReason.RATE_LIMITED], 1)
        self.assertEqual(len(self.logged("dropped_rate_limited")), 1)


class VerifierTests(Case):
    def test_trusted_networks(self) -> None:
        verifier = SourceVerifier(clock=self.clock)
        self.assertTrue(verifier.is_verified("127.0.0.1"))
        self.assertTrue(verifier.is_verified("::1"))
        self.assertTrue(verifier.is_verified("::ffff:127.0.0.1"))
        self.assertFalse(verifier.is_verified("203.0.113.9"))
        self.assertTrue(SourceVerifier(["10.0.0.0/8"], clock=self.clock).is_verified("10.1.2.3"))
        self.assertFalse(SourceVerifier([], clock=self.clock).is_verified("127.0.0.1"))

    def test_cookies(self) -> None:
        verifier = SourceVerifier([], clock=self.clock, lifetime=100)
        cookie = verifier.cookie("203.0.113.9")
        self.assertRegex(cookie, rb"\Acookie=[0-9a-f]{12}\Z")
        self.assertFalse(verifier.redeem("203.0.113.10", cookie))  # another host's
        self.assertFalse(verifier.redeem("203.0.113.9", cookie[:-1] + b"0" if cookie[-1:] != b"0" else b"1"))
        self.assertFalse(verifier.is_verified("203.0.113.9"))
        self.clock.advance(60)  # the next minute: still valid
        self.assertTrue(verifier.redeem("203.0.113.9", cookie))
        self.assertTrue(verifier.is_verified("203.0.113.9"))
        self.clock.advance(100)
        self.assertFalse(verifier.is_verified("203.0.113.9"))
        self.clock.advance(120)
        self.assertFalse(verifier.redeem("203.0.113.9", cookie))  # too old

    def test_the_verified_table_is_bounded(self) -> None:
        verifier = SourceVerifier([], clock=self.clock, max_verified=2)
        for host in ("a", "b", "c"):
            verifier.redeem(host, verifier.cookie(host))
        self.assertEqual([verifier.is_verified(h) for h in "abc"], [False, True, True])


class AmplificationTests(Case):
    def test_a_large_answer_to_an_unverified_source_becomes_error_2_with_a_cookie(self) -> None:
        port, factory = self.serve()
        request = encode_datagram(Kind.REQUEST, 5, b"big")
        [(reply, _)] = port.receive(request, SPOOFED)
        self.assertLessEqual(len(reply), 3 * len(request))
        frame = answer(reply)
        code, message = decode_error(frame.payload)
        self.assertEqual((frame.kind, frame.id, code), (Kind.ERROR, 5, ErrorCode.TOO_LARGE))
        self.assertRegex(message, r"\Acookie=[0-9a-f]{12};")
        stats = factory.stats
        self.assertEqual((stats.guarded, stats.errors[ErrorCode.TOO_LARGE], stats.answers), (1, 1, 0))
        self.assertEqual(len(self.logged("amplification")), 1)
        # The cookie in a PING verifies the source; the retransmission gets the cached answer.
        cookie = message.partition(";")[0].encode()
        [(pong, _)] = port.receive(encode_datagram(Kind.PING, 6, cookie), SPOOFED)
        self.assertEqual(answer(pong).payload, cookie)
        [(full, _)] = port.receive(request, SPOOFED)
        self.assertEqual(answer(full).payload, BIG)
        self.assertEqual((stats.requests, stats.cache_hits), (1, 1))

    def test_small_answers_and_trusted_sources_are_not_limited(self) -> None:
        port, _ = self.serve()
        [(reply, _)] = port.receive(encode_datagram(Kind.REQUEST, 1, b"small"), SPOOFED)
        self.assertEqual(answer(reply).payload, b"small")
        port, _ = self.serve(trusted=("127.0.0.0/8",))
        [(reply, _)] = port.receive(encode_datagram(Kind.REQUEST, 1, b"big"), LOCAL)
        self.assertEqual(answer(reply).payload, BIG)

    def test_the_guard_can_be_disabled(self) -> None:
        port, factory = self.serve(amplification=None)
        [(reply, _)] = port.receive(encode_datagram(Kind.REQUEST, 1, b"big"), SPOOFED)
        self.assertEqual(answer(reply).payload, BIG)
        self.assertIsNone(factory.verifier)

    def test_raw_mode_drops_and_counts(self) -> None:
        port, factory = self.serve(mode="raw")
        self.assertEqual(port.receive(b"big", SPOOFED), [])
        self.assertEqual(port.receive(b"small", SPOOFED), [(b"small", SPOOFED)])
        stats = factory.stats
        self.assertEqual((stats.drops[DropReason.AMPLIFICATION], stats.guarded, stats.answers), (1, 1, 1))

    def test_no_room_even_for_the_error_drops(self) -> None:
        port, factory = self.serve(amplification=1)
        self.assertEqual(port.receive(encode_datagram(Kind.REQUEST, 1, b"big"), SPOOFED), [])
        self.assertEqual(factory.stats.drops[DropReason.AMPLIFICATION], 1)
        self.assertEqual(factory.stats.errors[ErrorCode.TOO_LARGE], 1)

    def test_the_client_returns_the_cookie_and_gets_the_answer(self) -> None:
        port, _ = self.serve()
        client = DatagramClientProtocol(clock=self.clock)
        client_port = FakeDatagramTransport()
        client_port.connect("127.0.0.1", 8751)
        client_port.attach(client)
        d = client.request(b"big")
        for _ in range(10):  # the network: client to server and back
            sent, client_port.written[:] = list(client_port.written), []
            for datagram, _ in sent:
                for reply, _ in port.receive(datagram, SPOOFED):
                    client.datagramReceived(reply, ("127.0.0.1", 8751))
        self.assertEqual(self.successResultOf(d), BIG)


class HandlerTimeoutTests(Case):
    def test_spf1_error_6(self) -> None:
        d: Deferred[bytes] = Deferred()
        port, factory = self.serve(lambda r: d, handler_timeout=2, trusted=("0.0.0.0/0",))
        port.receive(encode_datagram(Kind.REQUEST, 3, b"x"), SPOOFED)
        self.clock.advance(2)
        frame = answer(port.datagrams()[-1])
        self.assertEqual((frame.kind, frame.id), (Kind.ERROR, 3))
        self.assertEqual(decode_error(frame.payload)[0], ErrorCode.TIMEOUT)
        self.assertEqual((factory.stats.errors[ErrorCode.TIMEOUT], factory.stats.in_flight), (1, 0))
        d.callback(b"late")
        self.assertEqual(len(port.datagrams()), 1)

    def test_raw_drops(self) -> None:
        port, factory = self.serve(lambda r: Deferred(), mode="raw", handler_timeout=2)
        port.receive(b"x", SPOOFED)
        self.clock.advance(2)
        self.assertEqual(port.datagrams(), [])
        self.assertEqual(factory.stats.errors[ErrorCode.TIMEOUT], 1)
        self.assertEqual(factory.stats.drops[DropReason.HANDLER_FAILED], 1)


class DrainTests(Case):
    def test_stop_reading_answer_what_runs_then_fire(self) -> None:
        d: Deferred[bytes] = Deferred()
        port, factory = self.serve(lambda r: d)
        port.receive(encode_datagram(Kind.REQUEST, 1, b"x"), SPOOFED)
        factory.stop_accepting()
        self.assertFalse(port.reading)
        self.assertEqual(port.receive(encode_datagram(Kind.REQUEST, 2, b"y"), SPOOFED), [])
        drained = factory.drain()
        self.assertNoResult(drained)
        d.callback(b"answered")
        self.assertEqual(answer(port.datagrams()[0]).payload, b"answered")
        self.successResultOf(drained)
        self.assertEqual(factory.stats.requests, 1)

    def test_nothing_running_drains_at_once(self) -> None:
        _, factory = self.serve()
        self.successResultOf(factory.drain())

    def test_abort_cancels_without_replying(self) -> None:
        port, factory = self.serve(lambda r: Deferred())
        port.receive(encode_datagram(Kind.REQUEST, 1, b"x"), SPOOFED)
        drained = factory.drain()
        self.assertEqual(factory.abort(), 1)
        self.assertEqual(port.datagrams(), [])
        self.assertEqual((factory.stats.abandoned, factory.stats.in_flight), (1, 0))
        # The service's pending work is empty once the cancelled calls were dealt with.
        self.successResultOf(drained)


class MetricsTests(Case):
    def test_counts(self) -> None:
        port, factory = self.serve(trusted=("0.0.0.0/0",))
        request = encode_datagram(Kind.REQUEST, 1, b"abc")
        port.receive(request, SPOOFED)
        port.receive(request, SPOOFED)  # a retransmission: from the cache
        port.receive(encode_datagram(Kind.PING, 2, b""), SPOOFED)
        port.receive(b"junk", SPOOFED)
        s = factory.stats
        self.assertEqual((s.received, s.requests, s.answers, s.cache_hits, s.pings), (4, 1, 1, 1, 1))
        self.assertEqual(s.bytes_in, 2 * len(request) + 12 + 4)
        self.assertEqual(s.bytes_out, sum(len(d) for d in port.datagrams()))
        self.assertEqual(s.replied, 3)
        self.assertEqual((s.handled, s.from_cache), (1, 1))
        counts = s.as_dict()
        self.assertEqual((counts["dropped_too_short"], counts["requests"], counts["guarded"]), (1, 1, 0))

    def test_drops_are_logged_within_the_rate(self) -> None:
        port, factory = self.serve()
        for _ in range(50):
            port.receive(b"junk", SPOOFED)
        self.assertEqual(len(self.logged("dropped_too_short")), factory.limiter.burst)
        self.assertEqual(factory.stats.drops[DropReason.TOO_SHORT], 50)

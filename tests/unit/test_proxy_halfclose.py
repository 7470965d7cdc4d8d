"""The half-close service on a PROXY listener: the header, then one request for its source."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core.proxy_encode import encode_v1, encode_v2
from sockproto.halfclose.client import HalfCloseClientProtocol
from sockproto.halfclose.server import HalfCloseServerFactory, HalfCloseServerProtocol
from sockproto.request import Request
from sockproto.serving.proxy import ProxySettings
from sockproto.testing import HalfCloseTransport
from sockproto.testing.memory import CLIENT_ADDRESS, connect_protocols

REAL = IPv4Address("TCP", "127.0.0.1", 51000)
SOURCE = ("203.0.113.7", 40000)
DESTINATION = ("192.0.2.1", 8752)
V2 = encode_v2(SOURCE, DESTINATION)
OUTSIDER = IPv4Address("TCP", "198.51.100.1", 5000)


class ProxyHalfCloseCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.seen: list[Request] = []
        self.events: list[dict[str, Any]] = []
        self.patch(HalfCloseServerProtocol, "_log", Logger(observer=self.events.append))

    def handler(self, request: Request) -> bytes:
        self.seen.append(request)
        return str(request.peer).encode() + b" " + request.payload

    def factory(self, proxy: ProxySettings | None = ProxySettings(), **kw: Any) -> HalfCloseServerFactory:
        return HalfCloseServerFactory(self.handler, clock=self.clock, proxy=proxy, **kw)

    def connect(
        self, factory: HalfCloseServerFactory, peer: Any = REAL, *chunks: bytes
    ) -> HalfCloseTransport:
        t = HalfCloseTransport(peer).connect(factory.buildProtocol(peer))
        for chunk in chunks:
            assert t.protocol is not None
            t.protocol.dataReceived(chunk)
        return t

    def categories(self) -> list[str]:
        return [e["sockproto_event"] for e in self.events]

    def assert_reset(self, t: HalfCloseTransport, category: str | None) -> None:
        self.assertTrue(t.aborted)
        self.assertEqual((self.seen, t.value()), ([], b""))
        if category is not None:
            self.assertIn(category, self.categories())


class HeaderThenRequestTests(ProxyHalfCloseCase):
    def test_the_handler_sees_the_header_source(self) -> None:
        for header in (V2, encode_v1(SOURCE, DESTINATION)):
            factory = self.factory()
            t = self.connect(factory, REAL, header + b"hello")
            t.peer_half_close()
            self.assertEqual(self.seen[-1].peer, IPv4Address("TCP", *SOURCE))
            self.assertEqual(self.seen[-1].payload, b"hello")
            self.assertTrue(t.closed_cleanly)
            self.assertEqual((factory.metrics.requests, factory.metrics.answers), (1, 1))
            self.assertEqual(factory.metrics.bytes_in, 5)  # the header is not request bytes

    def test_byte_by_byte_and_the_half_close_after_it(self) -> None:
        factory = self.factory()
        t = self.connect(factory, REAL, *[bytes([b]) for b in V2 + b"abc"])
        t.peer_half_close()
        self.assertEqual([(r.peer, r.payload) for r in self.seen], [(IPv4Address("TCP", *SOURCE), b"abc")])

    def test_through_real_protocols_in_memory(self) -> None:
        """The client's half-close after the header still ends the request (no ProtocolWrapper)."""
        client = HalfCloseClientProtocol(b"ping", proxy_header=V2)
        conn = connect_protocols(self.factory().buildProtocol(CLIENT_ADDRESS), client, chunk_size=7)
        conn.flush()
        self.assertEqual(
            self.successResultOf(client.answer), str(IPv4Address("TCP", *SOURCE)).encode() + b" ping"
        )

    def test_max_request_counts_after_the_header(self) -> None:
        t = self.connect(self.factory(max_request=3), REAL, V2 + b"abc")
        t.peer_half_close()
        self.assertEqual(self.seen[0].payload, b"abc")

    def test_ipv6_source_on_an_ipv4_listener(self) -> None:
        t = self.connect(self.factory(), REAL, encode_v2(("2001:db8::7", 1), ("2001:db8::1", 2)) + b"x")
        t.peer_half_close()
        self.assertEqual(self.seen[0].peer, IPv6Address("TCP", "2001:db8::7", 1))

    def test_the_request_timeout_starts_after_the_header(self) -> None:
        t = self.connect(self.factory(request_timeout=10), REAL, V2)
        self.clock.advance(9)
        self.assertFalse(t.aborted)
        self.clock.advance(1)
        self.assertTrue(t.aborted)
        self.assertIn("request_timeout", self.categories())

    def test_connection_logs_name_the_source(self) -> None:
        t = self.connect(self.factory(), REAL, V2 + b"x")
        t.peer_half_close()
        t.lose()
        by_event = {e["sockproto_event"]: e for e in self.events}
        self.assertEqual(by_event["connection_open"]["peer"], IPv4Address("TCP", *SOURCE))
        self.assertEqual(by_event["connection_open"]["proxy"], REAL)
        self.assertEqual(by_event["connection_close"]["peer"], IPv4Address("TCP", *SOURCE))


class LocalTests(ProxyHalfCloseCase):
    def test_a_health_check_counts_no_request(self) -> None:
        """HAProxy's check: LOCAL, then close: no request, nothing abandoned."""
        factory = self.factory()
        t = self.connect(factory, REAL, encode_v2(None, None, "LOCAL"))
        t.lose()
        self.assertEqual((factory.metrics.requests, factory.metrics.abandoned), (0, 0))
        self.assertEqual(factory.metrics.connections_total, 1)

    def test_a_request_after_local_is_served_for_the_real_peer(self) -> None:
        factory = self.factory()
        t = self.connect(factory, REAL, encode_v2(None, None, "LOCAL") + b"hc")
        t.peer_half_close()
        self.assertEqual([(r.peer, r.payload) for r in self.seen], [(REAL, b"hc")])
        self.assertEqual((factory.metrics.requests, factory.metrics.answers), (1, 1))

    def test_a_too_large_request_after_local_is_counted(self) -> None:
        factory = self.factory(max_request=1)
        t = self.connect(factory, REAL, encode_v2(None, None, "LOCAL") + b"hc")
        self.assertTrue(t.aborted)
        t.lose()
        metrics = factory.metrics
        self.assertEqual((metrics.requests, sum(metrics.errors.values()), metrics.abandoned), (1, 1, 0))


class RefusalTests(ProxyHalfCloseCase):
    def test_garbage(self) -> None:
        factory = self.factory()
        t = self.connect(factory, REAL, b"hello, no header\r\n")
        self.assert_reset(t, "proxy_error")
        t.lose()
        self.assertEqual((factory.metrics.requests, factory.metrics.abandoned), (0, 0))

    def test_truncated_then_timeout(self) -> None:
        t = self.connect(self.factory(), REAL, V2[:20])
        self.clock.advance(2.9)
        self.assertFalse(t.aborted)
        self.clock.advance(0.1)
        self.assert_reset(t, "proxy_timeout")

    def test_truncated_then_half_close(self) -> None:
        t = self.connect(self.factory(), REAL, V2[:20])
        t.peer_half_close()
        self.assert_reset(t, "proxy_error")

    def test_half_close_before_any_byte(self) -> None:
        t = self.connect(self.factory(), REAL)
        t.peer_half_close()
        self.assert_reset(t, None)

    def test_huge_v2_length(self) -> None:
        t = self.connect(self.factory(ProxySettings(max_length=536)), REAL, V2[:14] + b"\x03\xe8")
        self.assert_reset(t, "proxy_error")

    def test_peer_outside_proxy_from(self) -> None:
        factory = self.factory(ProxySettings(networks=["10.0.0.0/8"]))
        t = self.connect(factory, OUTSIDER)
        self.assert_reset(t, "proxy_refused")
        self.assertEqual(self.events[-1]["peer"], OUTSIDER)
        assert t.protocol is not None
        t.protocol.dataReceived(V2 + b"x")  # what Twisted may deliver before the reset: ignored
        self.assertEqual(self.categories().count("proxy_refused"), 1)

    def test_drain_during_the_header(self) -> None:
        factory = self.factory()
        t = self.connect(factory, REAL, V2[:3])
        factory.drain()
        self.assert_reset(t, None)
        t.lose()
        self.assertEqual((factory.metrics.requests, factory.metrics.abandoned), (0, 0))

    def test_no_proxy_path_unchanged(self) -> None:
        factory = self.factory(None)
        t = self.connect(factory, REAL, V2 + b"x")
        t.peer_half_close()
        self.assertEqual([(r.peer, r.payload) for r in self.seen], [(REAL, V2 + b"x")])
        self.assertEqual(factory.metrics.requests, 1)

"""The frame service on a PROXY listener: the header first, then frames served for its source."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core.proxy_encode import encode_v1, encode_v2
from sockproto.core.spf1 import ErrorCode, Kind
from sockproto.frame.protocol import FrameServerProtocol
from sockproto.frame.refusal import FrameRefusal
from sockproto.frame.server import FrameServerFactory
from sockproto.request import Request
from sockproto.serving.proxy import ProxyEndpoint, ProxySettings
from sockproto.testing.frames import build_ping, build_request, parse_error, parse_frames
from sockproto.testing.memory import CLIENT_ADDRESS, MemoryConnection, connect_protocols

SOURCE = ("203.0.113.7", 40000)
DESTINATION = ("192.0.2.1", 8750)
V2 = encode_v2(SOURCE, DESTINATION)
OUTSIDER = IPv4Address("TCP", "198.51.100.1", 5000)


class Client(Protocol):
    """Plays the proxy: writes raw bytes, keeps what comes back."""

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class ProxyFrameCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.seen: list[Request] = []
        self.events: list[dict[str, Any]] = []
        self.patch(FrameServerProtocol, "_log", Logger(observer=self.events.append))

    def handler(self, request: Request) -> bytes:
        self.seen.append(request)
        return str(request.peer).encode()

    def factory(self, proxy: ProxySettings | None = ProxySettings(), **kw: Any) -> FrameServerFactory:
        return FrameServerFactory(self.handler, clock=self.clock, proxy=proxy, **kw)

    def connect(
        self, factory: Any, data: bytes = b"", peer: IPv4Address | IPv6Address = CLIENT_ADDRESS, **kw: Any
    ) -> tuple[MemoryConnection, Client]:
        client = Client()
        server = factory.buildProtocol(peer)
        conn = connect_protocols(server, client, client_address=peer, **kw)
        if data:
            conn.client_transport.write(data)
            conn.flush()
        return conn, client

    def answers(self, client: Client) -> list[tuple[Any, Any, bytes]]:
        return [tuple(f) for f in parse_frames(client.received)]

    def categories(self) -> list[str]:
        return [e["sockproto_event"] for e in self.events]


class HeaderThenFramesTests(ProxyFrameCase):
    def test_the_handler_sees_the_header_source(self) -> None:
        for header in (V2, encode_v1(SOURCE, DESTINATION)):
            conn, client = self.connect(self.factory(), header + build_request(b"hi", 7))
            self.assertEqual(self.seen[-1].peer, IPv4Address("TCP", *SOURCE))
            self.assertEqual(self.seen[-1].payload, b"hi")
            self.assertEqual(
                self.answers(client), [(Kind.RESPONSE, 7, str(IPv4Address("TCP", *SOURCE)).encode())]
            )
            self.assertFalse(conn.server_transport.disconnecting)

    def test_byte_by_byte(self) -> None:
        stream = V2 + build_request(b"one", 1) + build_ping(b"p", 2) + build_request(b"two", 3)
        factory = self.factory()
        _, client = self.connect(factory, stream, chunk_size=1)
        self.assertEqual([r.payload for r in self.seen], [b"one", b"two"])
        self.assertEqual({r.peer for r in self.seen}, {IPv4Address("TCP", *SOURCE)})
        self.assertEqual([f[0] for f in self.answers(client)], [Kind.RESPONSE, Kind.PONG, Kind.RESPONSE])
        self.assertEqual((factory.metrics.requests, factory.metrics.pings), (2, 1))

    def test_nothing_reaches_the_decoder_before_the_header_is_whole(self) -> None:
        conn, _ = self.connect(self.factory(), V2[:-1])
        self.assertIsNone(conn.server._conn)  # type: ignore[attr-defined]
        conn.client_transport.write(V2[-1:] + build_request(b"x"))
        conn.flush()
        self.assertEqual([r.payload for r in self.seen], [b"x"])

    def test_connection_logs_name_the_header_source(self) -> None:
        conn, _ = self.connect(self.factory(), V2 + build_request(b"x"))
        conn.client_transport.loseConnection()
        conn.flush()
        events = {e["sockproto_event"]: e for e in self.events}
        self.assertEqual(events["connection_open"]["peer"], IPv4Address("TCP", *SOURCE))
        self.assertEqual(events["connection_open"]["proxy"], CLIENT_ADDRESS)
        self.assertEqual(events["connection_close"]["peer"], IPv4Address("TCP", *SOURCE))

    def test_ipv6_source_on_an_ipv4_listener(self) -> None:
        """The handler sees the client the proxy names, whatever the listener's family."""
        header = encode_v2(("2001:db8::7", 40000), ("2001:db8::1", 8750))
        self.connect(self.factory(), header + build_request(b"x"))
        self.assertEqual(self.seen[0].peer, IPv6Address("TCP", "2001:db8::7", 40000))

    def test_local_keeps_the_real_peer(self) -> None:
        """A health check: LOCAL, then a PING (a pong, no request), then a request for the proxy itself."""
        factory = self.factory()
        conn, client = self.connect(factory, encode_v2(None, None, "LOCAL") + build_ping(b"hc", 1))
        self.assertEqual(self.answers(client), [(Kind.PONG, 1, b"hc")])
        self.assertEqual((factory.metrics.requests, factory.metrics.pings), (0, 1))
        conn.client_transport.write(build_request(b"x", 2))
        conn.flush()
        self.assertEqual(self.seen[0].peer, CLIENT_ADDRESS)

    def test_the_idle_timeout_starts_after_the_header(self) -> None:
        conn, _ = self.connect(self.factory(idle_timeout=60), V2)
        self.clock.advance(30)
        self.assertFalse(conn.server_transport.disconnecting)  # the 3 s PROXY timeout is over
        self.clock.advance(30)
        self.assertTrue(conn.server_transport.disconnecting)


class RefusalTests(ProxyFrameCase):
    def assert_reset(self, conn: MemoryConnection, category: str | None) -> None:
        self.assertTrue(conn.server_transport.aborted)
        self.assertEqual(self.seen, [])
        self.assertEqual(conn.client_transport.buffered, 0)
        if category is not None:
            self.assertIn(category, self.categories())

    def test_garbage(self) -> None:
        conn, client = self.connect(self.factory(), b"GET / HTTP/1.0\r\n\r\n" + build_request(b"x"))
        self.assert_reset(conn, "proxy_error")
        self.assertEqual(client.received, b"")

    def test_a_frame_without_a_header(self) -> None:
        conn, _ = self.connect(self.factory(), build_request(b"x"))
        self.assert_reset(conn, "proxy_error")

    def test_truncated_then_timeout(self) -> None:
        conn, _ = self.connect(self.factory(), V2[:20])
        self.clock.advance(2.9)
        self.assertFalse(conn.server_transport.aborted)
        self.clock.advance(0.1)
        self.assert_reset(conn, "proxy_timeout")

    def test_truncated_then_eof(self) -> None:
        conn, _ = self.connect(self.factory(), V2[:20])
        conn.client_transport.loseWriteConnection()
        conn.flush()
        self.assert_reset(conn, "proxy_error")

    def test_huge_v2_length(self) -> None:
        """Over the limit: refused as soon as the length arrives; the most: waits, up to the timeout."""
        huge = V2[:14] + b"\x03\xe8"  # announces 1000 bytes
        conn, _ = self.connect(self.factory(ProxySettings(max_length=536)), huge)
        self.assert_reset(conn, "proxy_error")
        conn, _ = self.connect(self.factory(), V2[:14] + b"\xff\xff" + b"\x00" * 100)
        self.assertFalse(conn.server_transport.aborted)
        self.clock.advance(3)
        self.assert_reset(conn, "proxy_timeout")

    def test_peer_outside_proxy_from(self) -> None:
        factory = self.factory(ProxySettings(networks=["10.0.0.0/8"]))
        conn, _ = self.connect(factory, V2 + build_request(b"x"), peer=OUTSIDER)
        self.assert_reset(conn, "proxy_refused")
        self.assertEqual(
            [e["peer"] for e in self.events if e["sockproto_event"] == "proxy_refused"], [OUTSIDER]
        )
        conn, _ = self.connect(factory, V2 + build_request(b"x"), peer=IPv4Address("TCP", "10.1.2.3", 1))
        self.assertEqual(self.seen[0].peer, IPv4Address("TCP", *SOURCE))

    def test_refused_at_once_before_any_byte(self) -> None:
        conn, _ = self.connect(self.factory(), peer=OUTSIDER)
        self.assertTrue(conn.server_transport.aborted)

    def test_refusals_are_logged_at_a_limited_rate(self) -> None:
        factory = self.factory()
        for _ in range(100):
            self.connect(factory, peer=OUTSIDER)
        self.assertLessEqual(self.categories().count("proxy_refused"), factory.limiter.burst)

    def test_drain_during_the_header_closes(self) -> None:
        factory = self.factory()
        conn, _ = self.connect(factory, V2[:5])
        factory.drain()
        self.assertTrue(conn.server_transport.disconnecting)
        self.assertFalse(conn.server_transport.aborted)


class ListenerTests(ProxyFrameCase):
    def test_no_proxy_path_unchanged(self) -> None:
        """Without proxy, "PROXY ..." is just bytes: a broken SPF/1 header, ERROR 1, the real peer."""
        factory = self.factory(proxy=None)
        conn, client = self.connect(factory, build_request(b"x"))
        self.assertEqual(self.seen[0].peer, CLIENT_ADDRESS)
        self.assertNotIn("_proxy", vars(conn.server))
        _, client = self.connect(factory, encode_v1(SOURCE, DESTINATION))
        [(kind, _, payload)] = self.answers(client)
        self.assertEqual((kind, parse_error(payload)[0]), (Kind.ERROR, ErrorCode.PROTOCOL_ERROR))

    def test_a_proxy_endpoint_expects_a_header_on_its_connections_only(self) -> None:
        factory = self.factory(proxy=None)
        listened: list[Any] = []

        class Inner:
            def listen(self, f: Any) -> Any:
                listened.append(f)
                return None

        proxy = ProxySettings(timeout=1)
        ProxyEndpoint(Inner(), proxy).listen(factory)
        [listener] = listened
        built = listener.buildProtocol(CLIENT_ADDRESS)
        self.assertIs(built.settings.proxy, proxy)
        self.assertIs(listener.buildProtocol(CLIENT_ADDRESS).settings, built.settings)  # one copy
        self.assertIsNone(factory.settings.proxy)
        self.assertIs(built.settings.metrics, factory.metrics)
        self.connect(listener, V2 + build_request(b"x"))
        self.connect(factory, build_request(b"y"))
        self.assertEqual([r.peer for r in self.seen], [IPv4Address("TCP", *SOURCE), CLIENT_ADDRESS])
        self.assertEqual(factory.metrics.connections_total, 2)
        factory.max_payload = 10  # new settings: a new copy, with the new value
        self.assertEqual(listener.buildProtocol(CLIENT_ADDRESS).settings.max_payload, 10)

    def test_a_refusal_is_passed_on(self) -> None:
        factory = self.factory(proxy=None, max_connections=1)
        listened: list[Any] = []

        class Inner:
            def listen(self, f: Any) -> Any:
                listened.append(f)

        ProxyEndpoint(Inner(), ProxySettings()).listen(factory)
        self.connect(listened[0], V2)
        self.assertIsInstance(listened[0].buildProtocol(CLIENT_ADDRESS), FrameRefusal)

    def test_settings_are_checked(self) -> None:
        self.assertRaises(ValueError, ProxySettings, timeout=0)
        self.assertRaises(ValueError, ProxySettings, networks="10.0.0.0/8")
        self.assertRaises(ValueError, ProxySettings, networks=["ten"])
        self.assertRaises(ValueError, ProxySettings, max_length=10)

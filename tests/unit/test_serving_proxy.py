"""The Twisted side of the PROXY protocol: peers, who may send a header, ``proxy:`` endpoints."""

from __future__ import annotations

import ipaddress

from twisted.internet.address import HostnameAddress, IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core.datagram_guard import DEFAULT_TRUSTED
from sockproto.core.proxy import ProxyHeader, ProxyHeaderParser, ProxyProtocolError
from sockproto.core.proxy_encode import encode_v1, encode_v2
from sockproto.serving.proxy import (
    DEFAULT_PROXY_FROM,
    Network,
    parse_networks,
    peer_allowed,
    proxy_peer,
    split_proxy_endpoint,
)

REAL = IPv4Address("TCP", "127.0.0.1", 51000)
CLIENT = ("203.0.113.7", 40000)
SERVER = ("192.0.2.1", 8750)


def header_of(data: bytes) -> ProxyHeader:
    header = ProxyHeaderParser().feed(data)
    assert header is not None
    return header


class ProxyPeerTests(SynchronousTestCase):
    def test_ipv4_client(self) -> None:
        for data in (encode_v1(CLIENT, SERVER), encode_v2(CLIENT, SERVER)):
            self.assertEqual(proxy_peer(header_of(data), REAL), IPv4Address("TCP", *CLIENT))

    def test_ipv6_client(self) -> None:
        header = header_of(encode_v2(("2001:db8::7", 40000), ("2001:db8::1", 8750)))
        self.assertEqual(proxy_peer(header, REAL), IPv6Address("TCP", "2001:db8::7", 40000))
        header = header_of(encode_v1(("2001:DB8::7", 1), ("::1", 2)))
        self.assertEqual(proxy_peer(header, REAL), IPv6Address("TCP", "2001:db8::7", 1))

    def test_ipv4_mapped_client_appears_as_ipv4(self) -> None:
        for data in (
            encode_v2(("::ffff:203.0.113.7", 40000), ("::1", 8750)),
            b"PROXY TCP6 ::ffff:203.0.113.7 ::1 40000 8750\r\n",
        ):
            self.assertEqual(proxy_peer(header_of(data), REAL), IPv4Address("TCP", *CLIENT))

    def test_udp_client(self) -> None:
        header = header_of(encode_v2(CLIENT, SERVER, datagram=True))
        self.assertEqual(proxy_peer(header, REAL), IPv4Address("UDP", *CLIENT))
        header = header_of(encode_v2(("2001:db8::7", 5), ("2001:db8::1", 6), datagram=True))
        self.assertEqual(proxy_peer(header, REAL), IPv6Address("UDP", "2001:db8::7", 5))

    def test_no_client_keeps_the_real_peer(self) -> None:
        for data in (
            encode_v2(None, None, "LOCAL"),
            encode_v2(None, None),
            encode_v1(None, None),
            encode_v2("/run/client.sock", "/run/app.sock"),
        ):
            self.assertIs(proxy_peer(header_of(data), REAL), REAL)


class AllowedTests(SynchronousTestCase):
    def test_default_networks_are_loopback(self) -> None:
        self.assertEqual(DEFAULT_PROXY_FROM, DEFAULT_TRUSTED)
        self.assertEqual(
            parse_networks(), [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
        )

    def test_parse_networks(self) -> None:
        self.assertEqual(
            parse_networks(["10.0.0.0/8", " fd00::/8", "192.0.2.7", "192.0.2.9/24"]),
            [
                ipaddress.ip_network("10.0.0.0/8"),
                ipaddress.ip_network("fd00::/8"),
                ipaddress.ip_network("192.0.2.7/32"),
                ipaddress.ip_network("192.0.2.0/24"),
            ],
        )
        self.assertEqual(parse_networks([]), [])
        error = self.assertRaises(ValueError, parse_networks, ["10.0.0.0/8", "ten/8"])
        self.assertIn("'ten/8'", str(error))

    def test_peer_allowed(self) -> None:
        loopback = parse_networks()
        private = parse_networks(["10.0.0.0/8", "fe80::/10"])
        cases: list[tuple[IAddress, list[Network], bool]] = [
            (IPv4Address("TCP", "127.0.0.1", 1), loopback, True),
            (IPv4Address("TCP", "127.9.9.9", 1), loopback, True),
            (IPv4Address("TCP", "10.1.2.3", 1), loopback, False),
            (IPv4Address("TCP", "10.1.2.3", 1), private, True),
            (IPv6Address("TCP", "::1", 1), loopback, True),
            (IPv6Address("TCP", "::2", 1), loopback, False),
            (IPv6Address("TCP", "::ffff:127.0.0.1", 1), loopback, True),
            (IPv6Address("TCP", "::ffff:10.0.0.1", 1), private, True),
            (IPv6Address("TCP", "fe80::1%eth0", 1), private, True),
            (IPv6Address("TCP", "fe80::1%eth0", 1), loopback, False),
            (UNIXAddress(b"/run/app.sock"), [], True),  # only local processes reach it
            (UNIXAddress(None), [], True),
            (HostnameAddress(b"localhost", 1), loopback, False),
            (IPv4Address("TCP", "not-an-ip", 1), loopback, False),
        ]
        for peer, networks, allowed in cases:
            with self.subTest(peer=peer, networks=networks):
                self.assertIs(peer_allowed(peer, networks), allowed)


class EndpointTests(SynchronousTestCase):
    def test_split(self) -> None:
        for given, expected in [
            ("proxy:tcp:8750:interface=127.0.0.1", (True, "tcp:8750:interface=127.0.0.1")),
            ("PROXY:tcp6:8750", (True, "tcp6:8750")),
            ("proxy:unix:/run/app.sock", (True, "unix:/run/app.sock")),
            ("tcp:8750", (False, "tcp:8750")),
            ("unix:/run/proxy:1", (False, "unix:/run/proxy:1")),
            ("proxyish:8750", (False, "proxyish:8750")),
            ("", (False, "")),
        ]:
            self.assertEqual(split_proxy_endpoint(given), expected)

    def test_refused(self) -> None:
        for given, message in [
            ("proxy:", "needs an endpoint after it"),
            ("proxy: ", "needs an endpoint after it"),
            ("proxy:ssl:8443:privateKey=k.pem", "PROXY before TLS is not supported yet"),
            ("proxy:TLS:8443", "PROXY before TLS is not supported yet"),
            ("proxy:udp:8750", "UDP"),
            ("proxy:proxy:tcp:8750", "twice"),
        ]:
            error = self.assertRaises(ValueError, split_proxy_endpoint, given)
            self.assertIn(message, str(error))
            self.assertIn(repr(given), str(error))


class WiringExampleTests(SynchronousTestCase):
    """How a stream protocol uses the helpers: parse first, then ordinary data."""

    class Recorder(Protocol):
        def __init__(self) -> None:
            self.parser: ProxyHeaderParser | None = ProxyHeaderParser()
            self.peer: IAddress | None = None
            self.data = b""

        def dataReceived(self, data: bytes) -> None:
            if self.parser is not None:
                if not peer_allowed(self.transport.getPeer(), parse_networks()):  # type: ignore[union-attr]
                    self.transport.loseConnection()  # type: ignore[union-attr]
                    return
                try:
                    header = self.parser.feed(data)
                except ProxyProtocolError:
                    self.transport.loseConnection()  # type: ignore[union-attr]
                    return
                if header is None:
                    return
                self.peer = proxy_peer(header, self.transport.getPeer())  # type: ignore[union-attr]
                data, self.parser = self.parser.rest, None
            self.data += data

    def connect(self, peer: IAddress) -> tuple[Recorder, StringTransport]:
        protocol, transport = self.Recorder(), StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_header_then_data_in_pieces(self) -> None:
        protocol, transport = self.connect(REAL)
        stream = encode_v2(CLIENT, SERVER) + b"hello" + b" world"
        for i in range(0, len(stream), 7):
            protocol.dataReceived(stream[i : i + 7])
        self.assertEqual((protocol.peer, protocol.data), (IPv4Address("TCP", *CLIENT), b"hello world"))
        self.assertFalse(transport.disconnecting)

    def test_untrusted_peer_and_garbage_are_dropped(self) -> None:
        outsider = IPv4Address("TCP", "198.51.100.1", 1)
        for peer, data in ((outsider, encode_v1(CLIENT, SERVER)), (REAL, b"GET /")):
            protocol, transport = self.connect(peer)
            protocol.dataReceived(data)
            self.assertTrue(transport.disconnecting)
            self.assertEqual((protocol.peer, protocol.data), (None, b""))

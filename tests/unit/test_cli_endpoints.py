"""sockproto.cli.endpoints: ENDPOINT arguments, shorthand and strings, parsed without connecting."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IAddress, IHostnameResolver, IHostResolution, IResolutionReceiver
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from sockproto.cli.endpoints import client_endpoint, split_shorthand
from sockproto.datagram.endpoints import UDPClientEndpoint


@implementer(IHostResolution)
class Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        raise NotImplementedError


@implementer(IHostnameResolver)
class DualStackResolver:
    """Resolves every name to ::1 then 127.0.0.1, as a dual-stack host's getaddrinfo may."""

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        resolution = Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        resolutionReceiver.addressResolved(IPv6Address("TCP", "::1", portNumber))
        resolutionReceiver.addressResolved(IPv4Address("TCP", "127.0.0.1", portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


class ShorthandTests(SynchronousTestCase):
    def test_host_and_port(self) -> None:
        self.assertEqual(split_shorthand("127.0.0.1:8750"), ("127.0.0.1", 8750))
        self.assertEqual(split_shorthand("localhost:1"), ("localhost", 1))
        self.assertEqual(split_shorthand("db.example.org:65535"), ("db.example.org", 65535))

    def test_bracketed_ipv6(self) -> None:
        self.assertEqual(split_shorthand("[::1]:8750"), ("::1", 8750))
        self.assertEqual(split_shorthand("[fe80::1%eth0]:80"), ("fe80::1%eth0", 80))

    def test_bad_shorthands(self) -> None:
        for text in ("[localhost]:80", "[::1]:0", "127.0.0.1:70000", "127.0.0.1:0"):
            self.assertRaises(ValueError, split_shorthand, text)

    def test_endpoint_types_are_not_host_names(self) -> None:
        for text in ("tcp:8750", "unix:8750", "ssl:443", "tls:443", "udp:8751", "TCP:80"):
            self.assertIsNone(split_shorthand(text), text)

    def test_not_a_shorthand(self) -> None:
        for text in ("tcp:host=a:port=1", "127.0.0.1", "::1:8750", "host:port", "[::1]"):
            self.assertIsNone(split_shorthand(text), text)


class ClientEndpointTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def parse(self, text: str, datagram: bool = False) -> object:
        return client_endpoint(self.reactor, text, datagram=datagram, timeout=7).endpoint

    def test_tcp_shorthand_uses_hostname_endpoint(self) -> None:
        for text in ("127.0.0.1:8750", "[::1]:8750", "localhost:8750"):
            endpoint = self.parse(text)
            self.assertIsInstance(endpoint, HostnameEndpoint, text)

    def test_a_name_is_tried_on_each_of_its_ipv6_and_ipv4_addresses(self) -> None:
        self.reactor.installNameResolver(DualStackResolver())
        endpoint = self.parse("dual.example:8750")
        assert isinstance(endpoint, HostnameEndpoint)
        endpoint.connect(Factory.forProtocol(Protocol))
        self.reactor.advance(1)  # the next address is tried when the first has not connected
        attempts = [(host, port, timeout) for host, port, _, timeout, _ in self.reactor.tcpClients]
        self.assertEqual(attempts, [("::1", 8750, 7), ("127.0.0.1", 8750, 7)])

    def test_udp_shorthand_for_datagram(self) -> None:
        endpoint = self.parse("[::1]:8751", datagram=True)
        assert isinstance(endpoint, UDPClientEndpoint)
        self.assertEqual((endpoint.host, endpoint.port), ("::1", 8751))
        endpoint = self.parse("localhost:8751", datagram=True)
        assert isinstance(endpoint, UDPClientEndpoint)
        self.assertEqual(endpoint.host, "localhost")

    def test_udp_string(self) -> None:
        target = client_endpoint(self.reactor, "udp:host=127.0.0.1:port=8751", datagram=False, timeout=1)
        self.assertTrue(target.is_datagram)
        assert isinstance(target.endpoint, UDPClientEndpoint)
        self.assertEqual(target.endpoint.port, 8751)
        self.assertEqual(target.text, "udp:host=127.0.0.1:port=8751")

    def test_twisted_strings(self) -> None:
        self.assertIsInstance(self.parse("tcp:host=127.0.0.1:port=8750"), TCP4ClientEndpoint)
        self.assertIsInstance(self.parse("unix:path=/tmp/frame.sock"), UNIXClientEndpoint)
        self.assertFalse(client_endpoint(self.reactor, "tcp:a:1", datagram=False, timeout=1).is_datagram)

    def test_tls_string_is_understood(self) -> None:
        endpoint = self.parse("tls:host=localhost:port=8443")
        self.assertFalse(isinstance(endpoint, UDPClientEndpoint))

    def test_errors_are_one_line_and_name_the_argument(self) -> None:
        cases = {
            "::1:8750": "[::1]:8750",
            "nonsense": "expected HOST:PORT",
            "bogus:thing=1": "unknown endpoint type 'bogus'",
            "udp:host=x": "missing the port",
            "tcp:host=127.0.0.1": "tcp:host=127.0.0.1",
            "[nothost]:1": "not an IPv6 address",
            "127.0.0.1:99999": "between 1 and 65535",
        }
        for text, expected in cases.items():
            with self.assertRaises(ValueError, msg=text) as info:
                self.parse(text)
            message = str(info.exception)
            self.assertIn(expected, message, text)
            self.assertNotIn("\n", message)

    def test_unescaped_ipv6_in_twisted_string_gets_a_hint(self) -> None:
        with self.assertRaises(ValueError) as info:
            self.parse("tcp:host=::1:port=8750")
        self.assertIn("escape the colons", str(info.exception))

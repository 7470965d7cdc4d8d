"""UDP endpoint strings and endpoints, with a fake reactor (no socket is opened)."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core.datagram import READ_SIZE
from sockproto.datagram import endpoints
from sockproto.datagram.endpoints import (
    UDPClientEndpoint,
    UDPServerEndpoint,
    udp_client_from_string,
    udp_server_from_string,
)
from sockproto.datagram.server import DatagramServerFactory, DatagramServerProtocol
from sockproto.handlers import echo

from .datagram_fakes import FakeUDPTransport


class FakeReactor:
    """Records listenUDP calls; runs 'thread pool' work at once."""

    def __init__(self) -> None:
        self.udp: list[tuple[int, DatagramProtocol, str, int]] = []
        self.ports: list[FakeUDPTransport] = []

    def listenUDP(
        self, port: int, protocol: DatagramProtocol, interface: str = "", maxPacketSize: int = 8192
    ) -> Any:
        self.udp.append((port, protocol, interface, maxPacketSize))
        transport = FakeUDPTransport().attach(protocol)
        self.ports.append(transport)
        return transport

    def getThreadPool(self) -> Any:
        return self

    def callInThreadWithCallback(self, on_result: Any, f: Any, *args: Any) -> None:
        try:
            result = f(*args)
        except BaseException as e:
            on_result(False, Failure(e))
        else:
            on_result(True, result)

    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)


class ServerStringTests(SynchronousTestCase):
    def parse(self, text: str) -> UDPServerEndpoint:
        return udp_server_from_string(None, text)

    def test_forms(self) -> None:
        for text, port, interface in [
            ("udp:8751", 8751, ""),
            ("udp:0", 0, ""),
            ("UDP:8751", 8751, ""),
            ("udp:port=8751", 8751, ""),
            ("udp:8751:interface=127.0.0.1", 8751, "127.0.0.1"),
            ("udp:interface=127.0.0.1:port=53", 53, "127.0.0.1"),
            (r"udp:8751:interface=\:\:", 8751, "::"),
            (r"udp:8751:interface=\:\:1", 8751, "::1"),
            (r"udp:8751:interface=fe80\:\:1%lo", 8751, "fe80::1%lo"),
        ]:
            endpoint = self.parse(text)
            self.assertEqual((endpoint.port, endpoint.interface), (port, interface), text)

    def assertBad(self, text: str, *needles: str) -> None:
        with self.assertRaises(ValueError) as raised:
            self.parse(text)
        message = str(raised.exception)
        self.assertIn(repr(text), message)
        for needle in needles:
            self.assertIn(needle, message)

    def test_errors_name_the_bad_part(self) -> None:
        self.assertBad("tcp:8751", "udp:")
        self.assertBad("udp", "missing the port")
        self.assertBad("udp:interface=127.0.0.1", "missing the port")
        self.assertBad("udp:http", "'http'", "0 to 65535")
        self.assertBad("udp:65536", "'65536'")
        self.assertBad("udp:-1", "'-1'")
        self.assertBad("udp:8751:bogus=1", "'bogus'", "port, interface")
        self.assertBad("udp:8751:port=8752", "given twice")
        self.assertBad("udp:8751:interface=a:interface=b", "given twice")
        self.assertBad("udp:8751:interface=localhost", "'localhost'", "not an IP address")
        self.assertBad("udp:8751:8752", "unexpected part '8752'")
        self.assertBad("udp:8751\\", "backslash")

    def test_unescaped_ipv6_gets_a_hint(self) -> None:
        self.assertBad("udp:8751:interface=::1", r"escape the colons", "\\:")


class ClientStringTests(SynchronousTestCase):
    def test_forms(self) -> None:
        for text, host, port in [
            ("udp:host=example.org:port=53", "example.org", 53),
            ("udp:port=53:host=127.0.0.1", "127.0.0.1", 53),
            ("udp:localhost:8751", "localhost", 8751),
            (r"udp:host=\:\:1:port=8751", "::1", 8751),
        ]:
            endpoint = udp_client_from_string(None, text)
            self.assertEqual((endpoint.host, endpoint.port), (host, port), text)

    def test_errors_name_the_bad_part(self) -> None:
        for text, needle in [
            ("udp:port=53", "missing the host"),
            ("udp:host=h", "missing the port"),
            ("udp:host=h:port=dns", "'dns'"),
            ("udp:host=h:port=53:interface=x", "'interface'"),
            ("udp:h:53:host=g", "host is given twice"),
            ("udp:host=::1:port=53", "escape the colons"),
        ]:
            with self.assertRaises(ValueError) as raised:
                udp_client_from_string(None, text)
            self.assertIn(needle, str(raised.exception), text)


class ServerEndpointTests(SynchronousTestCase):
    def test_listen_reads_whole_datagrams(self) -> None:
        reactor = FakeReactor()
        proto = DatagramServerFactory(echo).buildProtocol(None)
        port = self.successResultOf(UDPServerEndpoint(reactor, 8751, "127.0.0.1").listen(proto))
        self.assertEqual(reactor.udp, [(8751, proto, "127.0.0.1", READ_SIZE)])
        self.assertIs(port, reactor.ports[0])
        self.assertEqual(READ_SIZE, 65536)

    def test_listen_with_a_factory_builds_one_protocol_per_socket(self) -> None:
        reactor = FakeReactor()
        factory = DatagramServerFactory(echo)
        self.successResultOf(UDPServerEndpoint(reactor, 1, "127.0.0.1").listen(factory))
        self.successResultOf(UDPServerEndpoint(reactor, 2, "127.0.0.2").listen(factory))
        first, second = (protocol for _, protocol, _, _ in reactor.udp)
        self.assertIsInstance(first, DatagramServerProtocol)
        self.assertIsNot(first, second)
        self.assertEqual(factory.protocols, {first, second})

    def test_listen_failure_is_in_the_deferred(self) -> None:
        class Refusing(FakeReactor):
            def listenUDP(self, *args: Any, **kw: Any) -> Any:
                raise OSError("no")

        d = UDPServerEndpoint(Refusing(), 1).listen(DatagramProtocol())
        self.failureResultOf(d, OSError)

        class Broken:
            def buildProtocol(self, addr: Any) -> DatagramProtocol:
                raise RuntimeError("cannot build")

        self.failureResultOf(UDPServerEndpoint(FakeReactor(), 1).listen(Broken()), RuntimeError)


class ClientEndpointTests(SynchronousTestCase):
    def test_literal_is_not_resolved_in_a_thread(self) -> None:
        class NoThreads(FakeReactor):
            def getThreadPool(self) -> Any:
                raise AssertionError("a literal needs no resolver")

        d = UDPClientEndpoint(NoThreads(), "::1", 53).resolve()
        [(family, sockaddr)] = self.successResultOf(d)
        self.assertEqual((family, sockaddr[:2]), (socket.AF_INET6, ("::1", 53)))

    def test_connect_binds_the_family_and_connects(self) -> None:
        self.patch(endpoints, "_unusable", lambda family, sockaddr: None)
        for host, bind in [("127.0.0.1", ""), ("::1", "::")]:
            reactor = FakeReactor()
            proto = DatagramProtocol()
            self.assertIs(self.successResultOf(UDPClientEndpoint(reactor, host, 53).connect(proto)), proto)
            self.assertEqual(reactor.udp, [(0, proto, bind, READ_SIZE)])
            self.assertEqual(reactor.ports[0].connected_to, (host, 53))

    def test_each_address_is_tried_in_order(self) -> None:
        addresses = [(socket.AF_INET6, ("2001:db8::1", 53, 0, 0)), (socket.AF_INET, ("192.0.2.1", 53))]
        tried: list[str] = []

        def unusable(family: int, sockaddr: Any) -> str | None:
            tried.append(sockaddr[0])
            return "Network is unreachable" if family == socket.AF_INET6 else None

        self.patch(endpoints, "_gai", lambda host, port, flags: addresses)
        self.patch(endpoints, "_unusable", unusable)
        reactor = FakeReactor()
        self.successResultOf(UDPClientEndpoint(reactor, "dual.example", 53).connect(DatagramProtocol()))
        self.assertEqual(tried, ["2001:db8::1", "192.0.2.1"])
        self.assertEqual(reactor.ports[0].connected_to, ("192.0.2.1", 53))

    def test_no_usable_address(self) -> None:
        self.patch(endpoints, "_unusable", lambda family, sockaddr: "Network is unreachable")
        d: Deferred[Any] = UDPClientEndpoint(FakeReactor(), "127.0.0.1", 53).connect(DatagramProtocol())
        message = str(self.failureResultOf(d, ConnectError).value)
        self.assertIn("127.0.0.1: Network is unreachable", message)

    def test_lookup_failure(self) -> None:
        def gai(host: str, port: int, flags: int) -> Any:
            if flags:
                raise socket.gaierror(socket.EAI_NONAME, "not numeric")
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        self.patch(endpoints, "_gai", gai)
        d = UDPClientEndpoint(FakeReactor(), "no.such.host", 53).resolve()
        message = str(self.failureResultOf(d, DNSLookupError).value)
        self.assertIn("no.such.host", message)
        self.assertIn("not known", message)

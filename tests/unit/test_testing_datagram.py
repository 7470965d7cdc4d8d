"""sockproto.testing: the fake UDP port, with the real datagram server and client."""

from __future__ import annotations

from twisted.internet.address import IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import MessageLengthError
from twisted.internet.interfaces import IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core import ErrorCode, Kind
from sockproto.core.datagram import DropReason
from sockproto.datagram.client import DatagramClientProtocol, PortUnreachable
from sockproto.datagram.server import DatagramServerFactory
from sockproto.request import Request
from sockproto.testing import (
    FakeDatagramTransport,
    build_error,
    build_frame,
    build_ping,
    build_request,
    parse_error,
    parse_frames,
    serve_datagrams,
)

PEER = ("127.0.0.1", 5353)


def upper(request: Request) -> bytes:
    if request.payload == b"fail":
        raise ValueError("asked to fail")
    return request.payload.upper()


class ServeDatagramsTests(SynchronousTestCase):
    def test_reply_goes_to_the_sender(self) -> None:
        port = serve_datagrams(upper)
        [(reply, addr)] = port.receive(build_request(b"hi", 7), PEER)
        self.assertEqual(addr, PEER)
        self.assertEqual(parse_frames(reply), [(Kind.RESPONSE, 7, b"HI")])
        self.assertEqual(port.written, [(reply, PEER)])

    def test_ping(self) -> None:
        [(reply, _)] = serve_datagrams(upper).receive(build_ping(b"p", 3))
        self.assertEqual(parse_frames(reply), [(Kind.PONG, 3, b"p")])

    def test_handler_failure_is_error_4(self) -> None:
        [(reply, _)] = serve_datagrams(upper).receive(build_request(b"fail", 1))
        ((kind, _, payload),) = parse_frames(reply)
        self.assertEqual((kind, parse_error(payload)[0]), (Kind.ERROR, ErrorCode.HANDLER_FAILED))
        self.flushLoggedErrors(ValueError)

    def test_junk_is_dropped_and_counted(self) -> None:
        port = serve_datagrams(upper)
        self.assertEqual(port.receive(b"junk"), [])
        self.assertEqual(port.receive(build_request(b"abc")[:-1]), [])
        self.assertEqual(port.receive(build_frame(b"", kind=Kind.RESPONSE)), [])
        stats = port.protocol.stats  # type: ignore[union-attr]
        self.assertEqual(
            (
                stats.drops[DropReason.TOO_SHORT],
                stats.drops[DropReason.TRUNCATED],
                stats.drops[DropReason.UNEXPECTED_KIND],
            ),
            (1, 1, 1),
        )

    def test_raw_mode(self) -> None:
        port = serve_datagrams(upper, mode="raw")
        self.assertEqual(port.receive(b"bare", ("::1", 9)), [(b"BARE", ("::1", 9))])

    def test_async_reply_recorded_when_fired(self) -> None:
        waiting: list[Deferred[bytes]] = []

        def handler(request: Request) -> Deferred[bytes]:
            d: Deferred[bytes] = Deferred()
            waiting.append(d)
            return d

        port = serve_datagrams(handler)
        self.assertEqual(port.receive(build_request(b"q", 1), PEER), [])
        self.assertEqual(port.receive(build_request(b"q", 1), PEER), [])  # retransmission: in progress
        waiting[0].callback(b"answer")
        self.assertEqual(len(waiting), 1)
        [(reply, addr)] = port.written
        self.assertEqual((parse_frames(reply)[0].payload, addr), (b"answer", PEER))

    def test_given_factory_and_host(self) -> None:
        factory = DatagramServerFactory(upper, clock=Clock())
        port = serve_datagrams(factory, host=IPv6Address("UDP", "::1", 8751))
        self.assertEqual(port.getHost(), IPv6Address("UDP", "::1", 8751))
        self.assertIn(port.protocol, factory.protocols)
        port.stopListening()
        self.assertNotIn(port.protocol, factory.protocols)
        self.assertFalse(port.listening)


class FakeDatagramTransportTests(SynchronousTestCase):
    def test_provides_iudptransport(self) -> None:
        self.assertTrue(IUDPTransport.providedBy(FakeDatagramTransport()))

    def test_unconnected_write_needs_an_address(self) -> None:
        port = FakeDatagramTransport()
        self.assertRaises(ValueError, port.write, b"x")
        self.assertRaises(TypeError, port.write, "text", PEER)

    def test_connected_port_writes_to_its_peer_only(self) -> None:
        port = FakeDatagramTransport()
        port.connect("127.0.0.1", 8751)
        port.write(b"a")
        port.write(b"b", ("127.0.0.1", 8751))
        self.assertRaises(ValueError, port.write, b"c", ("10.0.0.1", 8751))
        self.assertEqual(port.written, [(b"a", ("127.0.0.1", 8751)), (b"b", ("127.0.0.1", 8751))])
        port.clear()
        self.assertEqual(port.written, [])

    def test_send_failure_on_demand(self) -> None:
        port = serve_datagrams(upper)
        port.fail_with = OSError(105, "No buffer space available")
        self.assertEqual(port.receive(build_request(b"x")), [])
        self.assertEqual(port.protocol.stats.drops[DropReason.SEND_FAILED], 1)  # type: ignore[union-attr]
        port.fail_with = None
        self.assertEqual(port.datagrams(), [])
        port.receive(build_request(b"y", id=2))
        self.assertEqual(parse_frames(port.datagrams()[0]), [(Kind.RESPONSE, 2, b"Y")])

    def test_too_big_datagram_raises_like_a_socket(self) -> None:
        port = FakeDatagramTransport(max_datagram=100)
        self.assertRaises(MessageLengthError, port.write, b"x" * 101, PEER)

    def test_broadcast_flag(self) -> None:
        port = FakeDatagramTransport()
        port.setBroadcastAllowed(True)
        self.assertTrue(port.getBroadcastAllowed())

    def test_receive_needs_a_protocol(self) -> None:
        self.assertRaises(AssertionError, FakeDatagramTransport().receive, b"x")

    def test_drives_the_real_client(self) -> None:
        clock = Clock()
        client = DatagramClientProtocol(clock=clock, timeout=5, interval=1)
        port = FakeDatagramTransport()
        port.connect("127.0.0.1", 8751)
        port.attach(client)
        answer = client.request(b"hello")
        [(sent, addr)] = port.written
        self.assertEqual(addr, ("127.0.0.1", 8751))
        ((kind, ident, payload),) = parse_frames(sent)
        self.assertEqual((kind, payload), (Kind.REQUEST, b"hello"))
        clock.advance(1)  # no answer yet: retransmitted
        self.assertEqual([d for d, _ in port.written], [sent, sent])
        port.receive(build_frame(b"HELLO", kind=Kind.RESPONSE, id=ident or 0), ("127.0.0.1", 8751))
        self.assertEqual(self.successResultOf(answer), b"HELLO")

    def test_client_error_answer_and_refusal(self) -> None:
        client = DatagramClientProtocol(clock=Clock())
        port = FakeDatagramTransport()
        port.connect("127.0.0.1", 8751)
        port.attach(client)
        failing = client.request(b"x")
        port.receive(build_error(ErrorCode.OVERLOADED, "busy", id=1), ("127.0.0.1", 8751))
        self.assertEqual(self.failureResultOf(failing).value.code, ErrorCode.OVERLOADED)
        refused = client.request(b"y")
        port.refuse()
        self.failureResultOf(refused, PortUnreachable)

    def test_stop_listening_stops_the_protocol_once(self) -> None:
        stops: list[int] = []

        class Proto(DatagramProtocol):
            def stopProtocol(self) -> None:
                stops.append(1)

        port = FakeDatagramTransport().attach(Proto())
        self.successResultOf(port.stopListening())
        port.stopListening()
        self.assertEqual(stops, [1])

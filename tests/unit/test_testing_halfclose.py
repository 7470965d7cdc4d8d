"""sockproto.testing: the half-close transport and pair, with the real half-close protocols."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from sockproto.halfclose.client import HalfCloseClientProtocol, ServerReset
from sockproto.halfclose.server import HalfCloseServerFactory, HalfCloseServerProtocol
from sockproto.request import Request
from sockproto.testing import HalfCloseTransport, halfclose_pair


def reverse(request: Request) -> bytes:
    if request.payload == b"fail":
        raise RuntimeError("asked to fail")
    return request.payload[::-1]


class HalfClosePairTests(SynchronousTestCase):
    def test_answer(self) -> None:
        pair = halfclose_pair(reverse)
        self.assertEqual(self.successResultOf(pair.request(b"abc")), b"cba")
        self.assertTrue(pair.connections[0].closed)
        self.assertFalse(pair.connections[0].server_transport.aborted)  # a FIN, not a reset

    def test_empty_request_gets_an_answer(self) -> None:
        self.assertEqual(self.successResultOf(halfclose_pair(lambda r: b"empty?").request(b"")), b"empty?")

    def test_each_request_is_a_new_connection(self) -> None:
        pair = halfclose_pair(reverse)
        for payload in (b"one", b"two"):
            self.successResultOf(pair.request(payload))
        self.assertEqual(len(pair.connections), 2)

    def test_handler_failure_is_a_reset(self) -> None:
        pair = halfclose_pair(reverse)
        self.failureResultOf(pair.request(b"fail"), ServerReset)
        self.assertTrue(pair.connections[0].server_transport.aborted)
        self.flushLoggedErrors(RuntimeError)

    def test_request_over_limit_is_a_reset(self) -> None:
        pair = halfclose_pair(reverse, max_request=4)
        self.failureResultOf(pair.request(b"12345"), ServerReset)
        self.assertEqual(self.successResultOf(pair.request(b"1234")), b"4321")

    def test_async_handler_and_flush(self) -> None:
        waiting: list[Deferred[bytes]] = []

        def handler(request: Request) -> Deferred[bytes]:
            d: Deferred[bytes] = Deferred()
            waiting.append(d)
            return d

        pair = halfclose_pair(handler)
        answer = pair.request(b"q")
        self.assertNoResult(answer)
        waiting[0].callback(b"later")
        pair.flush()
        self.assertEqual(self.successResultOf(answer), b"later")

    def test_request_timeout_runs_on_the_pair_clock(self) -> None:
        pair = halfclose_pair(reverse, request_timeout=5)
        server = pair.factory.buildProtocol(None)
        transport = HalfCloseTransport().connect(server)  # a client that never half-closes
        assert isinstance(pair.clock, Clock)
        pair.clock.advance(5)
        self.assertTrue(transport.aborted)

    def test_factory_without_clock_gets_one(self) -> None:
        factory = HalfCloseServerFactory(reverse)
        pair = halfclose_pair(factory)
        self.assertIs(pair.factory, factory)
        self.assertIsInstance(factory.clock, Clock)
        self.assertEqual(self.successResultOf(pair.request(b"ab")), b"ba")


@implementer(IHalfCloseableProtocol)
class Recorder(Protocol):
    def __init__(self) -> None:
        self.events: list[object] = []

    def readConnectionLost(self) -> None:
        self.events.append("read-closed")

    def writeConnectionLost(self) -> None:
        self.events.append("write-closed")

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.events.append(reason.type)


class HalfCloseTransportTests(SynchronousTestCase):
    def test_is_a_tcp_transport(self) -> None:
        self.assertTrue(ITCPTransport.providedBy(HalfCloseTransport()))

    def test_server_answers_and_closes_cleanly(self) -> None:
        server = HalfCloseServerProtocol(reverse, clock=Clock())
        transport = HalfCloseTransport().connect(server)
        server.dataReceived(b"hello")
        transport.peer_half_close()
        self.assertEqual(transport.value(), b"olleh")
        self.assertTrue(transport.closed_cleanly)

    def test_client_writes_and_half_closes(self) -> None:
        client = HalfCloseClientProtocol(b"request")
        transport = HalfCloseTransport().connect(client)
        self.assertEqual(transport.value(), b"request")
        self.assertTrue(transport.write_closed)
        client.dataReceived(b"answer")
        transport.peer_half_close()
        self.assertEqual(self.successResultOf(client.answer), b"answer")
        self.assertTrue(transport.lost)  # both sides shut: closed at once

    def test_half_close_notifies_protocol_once(self) -> None:
        proto = Recorder()
        transport = HalfCloseTransport().connect(proto)
        transport.loseWriteConnection()
        transport.loseWriteConnection()
        self.assertEqual(proto.events, ["write-closed"])

    def test_close_after_half_close_loses_at_once(self) -> None:
        proto = Recorder()
        transport = HalfCloseTransport().connect(proto)
        transport.loseWriteConnection()
        transport.loseConnection()
        self.assertEqual(proto.events, ["write-closed", ConnectionDone])
        self.assertTrue(transport.closed_cleanly)

    def test_late_writes_are_kept_apart(self) -> None:
        transport = HalfCloseTransport().connect(Recorder())
        transport.write(b"in time")
        transport.loseWriteConnection()
        transport.writeSequence([b"too ", b"late"])
        self.assertEqual((transport.value(), transport.late_writes), (b"in time", b"too late"))

    def test_abort_loses_later_with_connection_aborted(self) -> None:
        proto = Recorder()
        transport = HalfCloseTransport().connect(proto)
        transport.abortConnection()
        self.assertEqual(proto.events, [])
        self.assertFalse(transport.closed_cleanly)
        transport.lose()
        transport.lose()
        self.assertEqual(proto.events, [ConnectionAborted])

    def test_peer_half_close_to_a_plain_protocol_ends_it(self) -> None:
        events: list[object] = []

        class Plain(Protocol):
            def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
                events.append(reason.type)

        HalfCloseTransport().connect(Plain()).peer_half_close()
        self.assertEqual(events, [ConnectionDone])

    def test_peer_reset(self) -> None:
        client = HalfCloseClientProtocol(b"x")
        transport = HalfCloseTransport().connect(client)
        transport.peer_reset()
        self.failureResultOf(client.answer, ServerReset)

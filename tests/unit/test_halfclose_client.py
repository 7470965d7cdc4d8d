"""The half-close client protocol and ``halfclose_request``, over in-memory transports."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IHalfCloseableProtocol, INegotiated
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import alsoProvides
from zope.interface.verify import verifyObject

from sockproto.halfclose.client import (
    DEFAULT_MAX_ANSWER,
    AnswerTimeout,
    AnswerTooLarge,
    HalfCloseClientProtocol,
    HalfCloseError,
    HalfCloseUnsupported,
    ServerReset,
    halfclose_request,
)
from sockproto.testing import HalfCloseTransport


def connected(request: bytes = b"question", **kw: Any) -> tuple[HalfCloseTransport, HalfCloseClientProtocol]:
    proto = HalfCloseClientProtocol(request, **kw)
    return HalfCloseTransport().connect(proto), proto


class ProtocolTests(SynchronousTestCase):
    def test_provides_half_closeable_protocol(self) -> None:
        _, proto = connected()
        self.assertTrue(verifyObject(IHalfCloseableProtocol, proto))

    def test_writes_request_then_half_closes(self) -> None:
        t, proto = connected(b"question")
        self.assertEqual(t.value(), b"question")
        self.assertTrue(t.write_closed)
        self.assertFalse(t.disconnecting)
        self.assertNoResult(proto.answer)

    def test_answer_is_everything_until_the_servers_fin(self) -> None:
        t, proto = connected()
        proto.dataReceived(b"ans")
        proto.dataReceived(b"wer")
        self.assertNoResult(proto.answer)
        t.peer_half_close()
        self.assertEqual(self.successResultOf(proto.answer), b"answer")
        self.assertTrue(t.closed_cleanly)
        t.lose()  # the close that follows changes nothing

    def test_empty_answer_after_a_clean_close(self) -> None:
        t, proto = connected()
        t.peer_half_close()
        self.assertEqual(self.successResultOf(proto.answer), b"")

    def test_reset_is_an_error_not_an_empty_answer(self) -> None:
        t, proto = connected()
        t.peer_reset()
        error = self.failureResultOf(proto.answer, ServerReset).value
        self.assertIn("reset", str(error))
        self.assertIsInstance(error, HalfCloseError)

    def test_reset_after_part_of_the_answer(self) -> None:
        t, proto = connected()
        proto.dataReceived(b"partial")
        t.peer_reset()
        self.failureResultOf(proto.answer, ServerReset)

    def test_fin_before_the_request_was_sent(self) -> None:
        proto = HalfCloseClientProtocol(b"q")
        t = HalfCloseTransport()
        t.loseWriteConnection = lambda: None  # type: ignore[method-assign]  # still flushing
        t.connect(proto)
        t.peer_half_close()
        error = self.failureResultOf(proto.answer, ServerReset).value
        self.assertIn("before reading the whole request", str(error))
        self.assertTrue(t.aborted)

    def test_closed_without_fin_nor_reset(self) -> None:
        t, proto = connected()
        t.lose()
        self.failureResultOf(proto.answer, ServerReset)

    def test_answer_too_large(self) -> None:
        t, proto = connected(max_answer=5)
        proto.dataReceived(b"12345")
        self.assertNoResult(proto.answer)
        proto.dataReceived(b"6")
        self.failureResultOf(proto.answer, AnswerTooLarge)
        self.assertTrue(t.aborted)
        proto.dataReceived(b"more")  # ignored after the abort
        t.lose()

    def test_default_max_answer(self) -> None:
        self.assertEqual(HalfCloseClientProtocol(b"").max_answer, DEFAULT_MAX_ANSWER)

    def test_no_answer_limit(self) -> None:
        t, proto = connected(max_answer=None)
        proto.dataReceived(b"x" * (DEFAULT_MAX_ANSWER + 1))
        t.peer_half_close()
        self.assertEqual(len(self.successResultOf(proto.answer)), DEFAULT_MAX_ANSWER + 1)

    def test_transport_that_cannot_half_close(self) -> None:
        proto = HalfCloseClientProtocol(b"secret")
        t = StringTransport()  # like TLS: an ITransport, not an ITCPTransport
        proto.makeConnection(t)
        error = self.failureResultOf(proto.answer, HalfCloseUnsupported).value
        self.assertIn("twisted#5341", str(error))
        self.assertEqual(t.value(), b"")
        self.assertTrue(t.disconnected)

    def test_tls_wrapper_claiming_tcp_is_refused(self) -> None:
        proto = HalfCloseClientProtocol(b"secret")
        t = HalfCloseTransport()  # as TLSMemoryBIOProtocol: copies ITCPTransport, adds INegotiated
        alsoProvides(t, INegotiated)
        t.connect(proto)
        self.failureResultOf(proto.answer, HalfCloseUnsupported)
        self.assertEqual(t.value(), b"")
        self.assertFalse(t.write_closed)
        self.assertTrue(t.aborted)

    def test_cancel_aborts(self) -> None:
        t, proto = connected()
        proto.answer.cancel()
        self.failureResultOf(proto.answer, CancelledError)
        self.assertTrue(t.aborted)
        t.lose()


class RequestTests(SynchronousTestCase):
    """``halfclose_request`` over a memory reactor that records connection attempts."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def accept(self, index: int = 0) -> HalfCloseTransport:
        """Complete the index-th TCP connection attempt with an in-memory transport."""
        factory = self.reactor.tcpClients[index][2]
        proto = factory.buildProtocol(None)
        return HalfCloseTransport().connect(proto)

    def test_endpoint_string(self) -> None:
        d = halfclose_request("tcp:host=127.0.0.1:port=8752", b"ping", reactor=self.reactor)
        host, port, *_ = self.reactor.tcpClients[0]
        self.assertEqual((host, port), ("127.0.0.1", 8752))
        t = self.accept()
        self.assertEqual(t.value(), b"ping")
        self.assertTrue(t.write_closed)
        t.protocol.dataReceived(b"pong")  # type: ignore[union-attr]
        t.peer_half_close()
        self.assertEqual(self.successResultOf(d), b"pong")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_unix_endpoint_string(self) -> None:
        halfclose_request("unix:path=/run/app.sock", b"x", reactor=self.reactor)
        self.assertEqual(self.reactor.unixClients[0][0], "/run/app.sock")

    def test_timeout(self) -> None:
        d = halfclose_request("tcp:host=127.0.0.1:port=1", b"q", timeout=2, reactor=self.reactor)
        t = self.accept()
        self.reactor.advance(1.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        error = self.failureResultOf(d, AnswerTimeout).value
        self.assertIn("2 s", str(error))
        self.assertIsInstance(error, TimeoutError)
        self.assertTrue(t.aborted)

    def test_timeout_while_connecting(self) -> None:
        d = halfclose_request("tcp:host=127.0.0.1:port=1", b"q", timeout=2, reactor=self.reactor)
        self.reactor.advance(2)
        error = self.failureResultOf(d, AnswerTimeout).value
        self.assertIn("could not connect within 2 s", str(error))

    def test_no_timeout(self) -> None:
        d = halfclose_request("tcp:host=127.0.0.1:port=1", b"q", timeout=None, reactor=self.reactor)
        t = self.accept()
        self.reactor.advance(3600)
        self.assertNoResult(d)
        t.peer_half_close()
        self.assertEqual(self.successResultOf(d), b"")

    def test_reset(self) -> None:
        d = halfclose_request("tcp:host=127.0.0.1:port=1", b"q", reactor=self.reactor)
        self.accept().peer_reset()
        self.failureResultOf(d, ServerReset)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_connection_refused(self) -> None:
        d = halfclose_request("tcp:host=127.0.0.1:port=1", b"q", reactor=self.reactor)
        factory = self.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.failureResultOf(d, ConnectionRefusedError)

    def test_cancel(self) -> None:
        d = halfclose_request("tcp:host=127.0.0.1:port=1", b"q", reactor=self.reactor)
        t = self.accept()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(t.aborted)

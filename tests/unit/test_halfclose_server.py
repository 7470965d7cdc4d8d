"""The half-close server protocol and factory, driven through an in-memory transport."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol, ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, LogLevel
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides
from zope.interface.verify import verifyObject

from sockproto.halfclose.server import (
    DEFAULT_MAX_REQUEST,
    DEFAULT_REQUEST_TIMEOUT,
    HalfCloseServerFactory,
    HalfCloseServerProtocol,
)
from sockproto.handlers import echo
from sockproto.request import Request
from sockproto.testing import HalfCloseTransport


class Recorder:
    """A handler that keeps its requests and answers with ``answer(request)``."""

    def __init__(self, answer: Any = echo) -> None:
        self.requests: list[Request] = []
        self.answer = answer

    def __call__(self, request: Request) -> Any:
        self.requests.append(request)
        return self.answer(request)


class ServerCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.patch(HalfCloseServerProtocol, "_log", Logger(observer=self.events.append))

    def connect(self, handler: Any = echo, **kw: Any) -> tuple[HalfCloseTransport, HalfCloseServerProtocol]:
        peer = kw.pop("peer", IPv4Address("TCP", "127.0.0.1", 40000))
        self.factory = HalfCloseServerFactory(handler, clock=self.clock, **kw)
        proto = self.factory.buildProtocol(None)
        transport = HalfCloseTransport(peer)
        return transport.connect(proto), proto

    def logged(self, level: LogLevel) -> list[dict[str, Any]]:
        return [e for e in self.events if e["log_level"] is level]

    def notable(self) -> list[dict[str, Any]]:
        """Events above debug (connections opening and closing are debug events)."""
        return [e for e in self.events if e["log_level"] is not LogLevel.debug]


class AnswerTests(ServerCase):
    def test_provides_half_closeable_protocol(self) -> None:
        _, proto = self.connect()
        self.assertTrue(verifyObject(IHalfCloseableProtocol, proto))

    def test_request_read_to_eof_answered_then_closed(self) -> None:
        handler = Recorder()
        t, proto = self.connect(handler)
        for chunk in (b"hel", b"lo ", b"world"):
            proto.dataReceived(chunk)
        self.assertEqual(handler.requests, [])
        self.assertEqual(t.value(), b"")
        t.peer_half_close()
        self.assertEqual(t.value(), b"hello world")
        self.assertTrue(t.closed_cleanly)
        [request] = handler.requests
        self.assertEqual(request.payload, b"hello world")
        self.assertEqual((request.id, request.kind, request.header), (None, None, ()))
        self.assertEqual(request.peer, IPv4Address("TCP", "127.0.0.1", 40000))
        self.assertEqual(t.late_writes, b"")

    def test_single_chunk_is_not_copied(self) -> None:
        handler = Recorder()
        t, proto = self.connect(handler)
        chunk = b"x" * 1000
        proto.dataReceived(chunk)
        t.peer_half_close()
        self.assertIs(handler.requests[0].payload, chunk)

    def test_empty_request(self) -> None:
        handler = Recorder(lambda r: b"empty" if r.payload == b"" else b"?")
        t, _ = self.connect(handler)
        t.peer_half_close()
        self.assertEqual(t.value(), b"empty")
        self.assertTrue(t.closed_cleanly)

    def test_empty_answer_is_a_clean_close(self) -> None:
        t, proto = self.connect(lambda r: b"")
        proto.dataReceived(b"ask")
        t.peer_half_close()
        self.assertEqual(t.value(), b"")
        self.assertTrue(t.closed_cleanly)

    def test_ipv4_mapped_peer_is_plain_ipv4(self) -> None:
        handler = Recorder()
        t, _ = self.connect(handler, peer=IPv6Address("TCP", "::ffff:127.0.0.1", 5555))
        t.peer_half_close()
        self.assertEqual(handler.requests[0].peer, IPv4Address("TCP", "127.0.0.1", 5555))

    def test_bytes_like_answer(self) -> None:
        t, proto = self.connect(lambda r: bytearray(b"ba") + r.payload)
        proto.dataReceived(b"r")
        t.peer_half_close()
        self.assertEqual(t.value(), b"bar")
        self.assertTrue(t.closed_cleanly)

    def test_deferred_answer_written_when_it_fires(self) -> None:
        d: Deferred[bytes] = Deferred()
        t, proto = self.connect(lambda r: d)
        proto.dataReceived(b"q")
        t.peer_half_close()
        self.assertEqual(t.value(), b"")
        self.assertFalse(t.disconnecting)
        d.callback(b"later")
        self.assertEqual(t.value(), b"later")
        self.assertTrue(t.closed_cleanly)

    def test_already_fired_deferred(self) -> None:
        t, _ = self.connect(lambda r: succeed(b"now"))
        t.peer_half_close()
        self.assertEqual(t.value(), b"now")
        self.assertTrue(t.closed_cleanly)

    def test_coroutine_answer(self) -> None:
        gate: Deferred[None] = Deferred()

        async def handler(request: Request) -> bytes:
            await gate
            return request.payload.upper()

        t, proto = self.connect(handler)
        proto.dataReceived(b"abc")
        t.peer_half_close()
        self.assertFalse(t.disconnecting)
        gate.callback(None)
        self.assertEqual(t.value(), b"ABC")
        self.assertTrue(t.closed_cleanly)

    def test_nothing_logged_on_success_but_debug_connection_events(self) -> None:
        t, _ = self.connect()
        t.peer_half_close()
        self.assertEqual(self.notable(), [])
        self.assertEqual([e["sockproto_event"] for e in self.events], ["connection_open"])
        self.assertEqual(self.events[0]["peer"], IPv4Address("TCP", "127.0.0.1", 40000))


class ResetTests(ServerCase):
    def test_over_max_request_resets_as_soon_as_passed(self) -> None:
        handler = Recorder()
        t, proto = self.connect(handler, max_request=10)
        proto.dataReceived(b"123456")
        proto.dataReceived(b"7890")  # exactly 10: still fine
        self.assertFalse(t.aborted)
        proto.dataReceived(b"1")
        self.assertTrue(t.aborted)
        self.assertEqual(t.value(), b"")
        proto.dataReceived(b"more")  # ignored
        t.lose()
        self.assertEqual(handler.requests, [])
        [warning] = self.logged(LogLevel.warn)
        self.assertEqual(warning["limit"], 10)

    def test_exactly_max_request_is_answered(self) -> None:
        t, proto = self.connect(max_request=4)
        proto.dataReceived(b"1234")
        t.peer_half_close()
        self.assertEqual(t.value(), b"1234")
        self.assertTrue(t.closed_cleanly)

    def test_max_request_zero_accepts_only_empty(self) -> None:
        t, proto = self.connect(max_request=0)
        proto.dataReceived(b"x")
        self.assertTrue(t.aborted)

    def test_first_chunk_over_the_limit_is_not_kept(self) -> None:
        t, proto = self.connect(max_request=10)
        proto.dataReceived(b"x" * 1000)
        self.assertTrue(t.aborted)
        self.assertEqual(proto.exchange.held, 0)

    def test_handler_exception_resets_and_logs_traceback(self) -> None:
        def handler(request: Request) -> bytes:
            raise ValueError("nope")

        t, proto = self.connect(handler)
        proto.dataReceived(b"q")
        t.peer_half_close()
        self.assertTrue(t.aborted)
        self.assertEqual(t.value(), b"")
        [event] = self.logged(LogLevel.critical)
        self.assertTrue(event["log_failure"].check(ValueError))
        self.assertIs(event["handler"], handler)

    def test_wrong_answer_type_resets(self) -> None:
        t, _ = self.connect(lambda r: "text")
        t.peer_half_close()
        self.assertTrue(t.aborted)
        [event] = self.logged(LogLevel.critical)
        self.assertTrue(event["log_failure"].check(TypeError))

    def test_failed_deferred_resets_and_logs(self) -> None:
        d: Deferred[bytes] = Deferred()
        t, _ = self.connect(lambda r: d)
        t.peer_half_close()
        d.errback(RuntimeError("async boom"))
        self.assertTrue(t.aborted)
        self.assertEqual(t.value(), b"")
        [event] = self.logged(LogLevel.critical)
        self.assertTrue(event["log_failure"].check(RuntimeError))

    def test_failed_coroutine_resets(self) -> None:
        async def handler(request: Request) -> bytes:
            raise KeyError("k")

        t, _ = self.connect(handler)
        t.peer_half_close()
        self.assertTrue(t.aborted)
        [event] = self.logged(LogLevel.critical)
        self.assertTrue(event["log_failure"].check(KeyError))

    def test_connection_lost_mid_handler_cancels_it(self) -> None:
        cancelled: list[Deferred[bytes]] = []
        d: Deferred[bytes] = Deferred(cancelled.append)
        t, _ = self.connect(lambda r: d)
        t.peer_half_close()
        t.peer_reset()
        self.assertEqual(cancelled, [d])
        self.assertFalse(t.aborted)
        self.assertEqual(self.notable(), [])  # the CancelledError is expected: not logged
        self.assertEqual(self.factory.connections, set())

    def test_answer_after_connection_lost_is_dropped(self) -> None:
        d: Deferred[bytes] = Deferred(lambda d: None)  # a canceller that does not fire it
        t, _ = self.connect(lambda r: d)
        t.peer_half_close()
        t.peer_reset()
        self.assertTrue(d.called)  # with CancelledError, since the canceller did not fire it
        self.assertEqual(t.value() + t.late_writes, b"")
        self.assertEqual(self.notable(), [])


class TimeoutTests(ServerCase):
    def test_default_timeout(self) -> None:
        self.assertEqual(DEFAULT_REQUEST_TIMEOUT, 30.0)
        self.assertEqual(DEFAULT_MAX_REQUEST, 1024 * 1024)
        t, _ = self.connect()
        self.clock.advance(DEFAULT_REQUEST_TIMEOUT - 0.1)
        self.assertFalse(t.aborted)
        self.clock.advance(0.1)
        self.assertTrue(t.aborted)

    def test_counted_from_connecting_not_reset_by_data(self) -> None:
        handler = Recorder()
        t, proto = self.connect(handler, request_timeout=5)
        for _ in range(4):
            self.clock.advance(1)
            proto.dataReceived(b"drip")
        self.clock.advance(1)
        self.assertTrue(t.aborted)
        self.assertEqual(t.value(), b"")
        t.peer_half_close()  # late: not served
        self.assertEqual(handler.requests, [])
        [info] = self.logged(LogLevel.info)
        self.assertEqual(info["timeout"], 5)

    def test_half_close_in_time_stops_the_clock(self) -> None:
        d: Deferred[bytes] = Deferred()
        t, proto = self.connect(lambda r: d, request_timeout=5, handler_timeout=None)
        proto.dataReceived(b"q")
        self.clock.advance(4)
        t.peer_half_close()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)  # a slow handler is not this timeout's business
        self.assertFalse(t.aborted)
        d.callback(b"slow")
        self.assertEqual(t.value(), b"slow")
        self.assertTrue(t.closed_cleanly)

    def test_no_timeout(self) -> None:
        t, _ = self.connect(request_timeout=None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        t.peer_half_close()
        self.assertTrue(t.closed_cleanly)

    def test_connection_lost_cancels_the_timer(self) -> None:
        t, _ = self.connect(request_timeout=5)
        t.peer_reset()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_too_large_cancels_the_timer(self) -> None:
        t, proto = self.connect(request_timeout=5, max_request=1)
        self.assertFalse(t.aborted)
        proto.dataReceived(b"xx")
        self.assertTrue(t.aborted)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.logged(LogLevel.warn)), 1)
        self.assertEqual(self.logged(LogLevel.info), [])


class FactoryTests(ServerCase):
    def test_configuration_passed_on(self) -> None:
        factory = HalfCloseServerFactory(echo, max_request=7, request_timeout=2.5, clock=self.clock)
        proto = factory.buildProtocol(None)
        self.assertIs(proto.factory, factory)
        self.assertIs(proto.handler, echo)
        self.assertEqual((proto.max_request, proto.request_timeout), (7, 2.5))
        self.assertIs(proto.clock, self.clock)

    def test_tracks_open_connections(self) -> None:
        t1, p1 = self.connect()
        p2 = self.factory.buildProtocol(None)
        t2 = HalfCloseTransport().connect(p2)
        self.assertEqual(self.factory.connections, {p1, p2})
        t1.peer_half_close()
        self.assertEqual(self.factory.connections, {p1, p2})  # closing, not closed yet
        t1.lose()
        self.assertEqual(self.factory.connections, {p2})
        t2.lose()
        self.assertEqual(self.factory.connections, set())

    def test_invalid_configuration(self) -> None:
        self.assertRaises(ValueError, HalfCloseServerFactory, echo, max_request=-1)
        self.assertRaises(ValueError, HalfCloseServerFactory, echo, request_timeout=0)
        self.assertRaises(ValueError, HalfCloseServerFactory, echo, request_timeout=-3)

    def test_protocol_without_factory_works(self) -> None:
        proto = HalfCloseServerProtocol(echo, clock=self.clock)
        t = HalfCloseTransport().connect(proto)
        proto.dataReceived(b"solo")
        t.peer_half_close()
        self.assertEqual(t.value(), b"solo")


class NoHalfCloseTests(ServerCase):
    """Issue 12 item 3: a transport that cannot deliver the half-close is refused, loudly, once."""

    def refused(self, transport: Any, factory: HalfCloseServerFactory | None = None) -> Any:
        factory = factory or HalfCloseServerFactory(echo, clock=self.clock)
        self.factory = factory
        proto = factory.buildProtocol(None)
        assert isinstance(proto, HalfCloseServerProtocol)
        transport.protocol = proto
        proto.makeConnection(transport)
        return proto

    def test_tls_transport_is_aborted_and_logged_once_per_factory(self) -> None:
        factory = HalfCloseServerFactory(echo, clock=self.clock)
        transports = [HalfCloseTransport() for _ in range(3)]
        for t in transports:
            directlyProvides(t, ISSLTransport)  # as TLSMemoryBIOProtocol does, over a TCP transport
            self.refused(t, factory)
            self.assertTrue(t.aborted)
            t.lose()
        [error] = self.logged(LogLevel.error)
        self.assertIn("TLS", error["why"])
        self.assertEqual(factory.connections, set())
        self.assertEqual(factory.metrics.connections_refused, 3)
        self.assertEqual(factory.metrics.requests, 0)
        self.refused(HalfCloseTransport(), HalfCloseServerFactory(echo, clock=self.clock))
        self.assertEqual(len(self.logged(LogLevel.error)), 1)  # another factory, a good transport

    def test_transport_without_half_close_is_aborted(self) -> None:
        t = StringTransport()
        t.abortConnection = lambda: setattr(t, "aborted", True)  # type: ignore[method-assign]
        self.refused(t)
        self.assertTrue(t.aborted)  # type: ignore[attr-defined]
        [error] = self.logged(LogLevel.error)
        self.assertIn("does not deliver the peer's half-close", error["why"])

    def test_protocol_wrapper_is_aborted(self) -> None:
        """HAProxy's wrapper is a ProtocolWrapper: it copies the interfaces but not the half-close."""
        inner = HalfCloseTransport()
        wrapping = WrappingFactory(HalfCloseServerFactory(echo, clock=self.clock))
        wrapper = wrapping.buildProtocol(None)
        assert wrapper is not None
        inner.connect(wrapper)
        self.assertTrue(inner.aborted)
        [error] = self.logged(LogLevel.error)
        self.assertIn("ProtocolWrapper", error["why"])

    def test_tls_for_real(self) -> None:
        """Twisted's own TLS wrapper is refused (before any handshake byte matters)."""
        from twisted.internet.ssl import PrivateCertificate
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from ..loopback.tls import make_certificate

        directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, directory)
        pem, _ = make_certificate(directory)
        options = PrivateCertificate.loadPEM(pem.read_bytes()).options()
        factory = HalfCloseServerFactory(echo, clock=self.clock)
        tls = TLSMemoryBIOFactory(options, False, factory).buildProtocol(None)
        assert tls is not None
        t = HalfCloseTransport().connect(tls)
        self.assertTrue(t.aborted)
        self.assertIn("TLS", self.logged(LogLevel.error)[0]["why"])

"""FramePool, driven by a Clock and endpoints whose connections the test accepts or refuses."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from sockproto.core import SPF1, Frame, FrameDecoder, Kind
from sockproto.frame.client import RequestTimeout
from sockproto.frame.pool import FramePool, NoEndpointAvailable, PoolClosed, RequestLost
from sockproto.frame.pool_conn import PooledProtocol

REQ, RESP, PING, PONG = int(Kind.REQUEST), int(Kind.RESPONSE), int(Kind.PING), int(Kind.PONG)


class Transport(StringTransport):
    """A transport whose closing reaches the protocol, as a socket's does."""

    def __init__(self) -> None:
        super().__init__()
        self.proto: Any = None  # ClientService's proxy, which tells the service too
        self.aborted = False

    def _lose(self, reason: Exception) -> None:
        proto, self.proto = self.proto, None
        if proto is not None:
            proto.connectionLost(Failure(reason))

    def loseConnection(self) -> None:
        self._lose(ConnectionDone())

    def abortConnection(self) -> None:
        self.aborted = True
        self._lose(ConnectionLost("aborted"))


@implementer(IStreamClientEndpoint)
class Endpoint:
    """Connection attempts wait until the test accepts or refuses them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.attempts: list[tuple[Deferred[Any], IProtocolFactory]] = []

    def __repr__(self) -> str:
        return self.name

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.attempts.append((d, protocolFactory))
        return d

    def accept(self) -> Conn:
        d, factory = self.attempts.pop(0)
        proto = factory.buildProtocol(None)
        transport = Transport()
        proto.makeConnection(transport)
        transport.proto = proto
        d.callback(proto)
        return Conn(proto._protocol, transport)  # ours, under ClientService's proxy

    def refuse(self) -> None:
        d, _ = self.attempts.pop(0)
        d.errback(ConnectionRefusedError(f"{self.name} refused"))


class Conn:
    """One accepted connection, seen from the server's side."""

    def __init__(self, proto: Any, transport: Transport) -> None:
        self.proto: PooledProtocol = proto
        self.transport = transport
        self._decoder: FrameDecoder[Frame] = FrameDecoder(SPF1)

    def frames(self) -> list[tuple[int, int, bytes]]:
        """The frames the pool wrote since the last call: (kind, id, payload)."""
        data = self.transport.value()
        self.transport.clear()
        out = []
        for event in self._decoder.feed(data):
            assert isinstance(event, Frame)
            out.append((int(event.kind or 0), int(event.id or 0), event.payload))
        return out

    def answer(self, kind: int, ident: int, payload: bytes) -> None:
        self.proto.dataReceived(SPF1.pack_header(len(payload), kind=kind, id=ident) + payload)


class PoolTests(SynchronousTestCase):
    def make(self, *names: str, **kw: Any) -> tuple[FramePool, list[Endpoint]]:
        self.clock = Clock()
        endpoints = [Endpoint(n) for n in names]
        kw.setdefault("keepalive", None)
        pool = FramePool(endpoints, reactor=self.clock, retry_policy=lambda n: 1.0, **kw)
        pool.startService()
        return pool, endpoints

    def test_least_pending_across_endpoints(self) -> None:
        pool, (a, b) = self.make("a", "b")
        ca, cb = a.accept(), b.accept()
        asked = [pool.request(b"%d" % i) for i in range(4)]
        fa, fb = ca.frames(), cb.frames()
        self.assertEqual((len(fa), len(fb)), (2, 2))
        for _, ident, payload in fa:
            ca.answer(RESP, ident, payload)
        self.assertEqual(sum(1 for d in asked if d.called), 2)
        pool.request(b"x")
        pool.request(b"y")  # a has none pending, b two: both go to a
        self.assertEqual([p for _, _, p in ca.frames()], [b"x", b"y"])
        self.assertEqual(cb.frames(), [])

    def test_keepalive_pings_after_idle_seconds_since_last_send(self) -> None:
        pool, (a,) = self.make("a", keepalive=5.0)
        conn = a.accept()
        self.clock.advance(3)
        pool.request(b"q")
        conn.frames()
        self.clock.advance(4.9)  # 7.9: 4.9 s since the request
        self.assertEqual(conn.frames(), [])
        self.clock.advance(0.1)
        [(kind, ident, _)] = conn.frames()
        self.assertEqual(kind, PING)
        conn.answer(PONG, ident, b"")
        self.clock.advance(4.9)
        self.assertEqual(conn.frames(), [])
        self.clock.advance(0.1)
        self.assertEqual([k for k, _, _ in conn.frames()], [PING])

    def test_missing_pong_closes_and_replaces_the_connection(self) -> None:
        pool, (a,) = self.make("a", keepalive=5.0, ping_timeout=2.0)
        conn = a.accept()
        self.clock.advance(5)
        self.assertEqual([k for k, _, _ in conn.frames()], [PING])
        self.clock.advance(1.9)
        self.assertFalse(conn.transport.aborted)
        self.clock.advance(0.1)
        self.assertTrue(conn.transport.aborted)
        [status] = pool.status()
        self.assertEqual((status.connected, status.connections_lost), (0, 1))
        self.assertIn("no PONG within 2 s", status.last_failure or "")
        self.clock.advance(1.0)  # the retry policy's delay
        fresh = a.accept()
        self.assertEqual(pool.status()[0].connected, 1)
        d = pool.request(b"again")
        [(_, ident, _)] = fresh.frames()
        fresh.answer(RESP, ident, b"ok")
        self.assertEqual(self.successResultOf(d), b"ok")

    def test_request_in_flight_on_a_dying_connection_fails_and_is_not_resent(self) -> None:
        pool, (a,) = self.make("a")
        conn = a.accept()
        d = pool.request(b"q")
        conn.frames()
        conn.transport.abortConnection()
        error = self.failureResultOf(d, RequestLost).value
        self.assertEqual(error.endpoint, "a")
        self.assertIn("lost with the request in flight", str(error))
        self.clock.advance(1.0)
        fresh = a.accept()
        self.assertEqual(fresh.frames(), [])

    def test_retry_resends_only_idempotent_requests(self) -> None:
        pool, (a, b) = self.make("a", "b")
        ca, cb = a.accept(), b.accept()
        safe = pool.request(b"read", retry=True)
        unsafe = pool.request(b"write")
        on_a = [p for _, _, p in ca.frames()]
        on_b = [p for _, _, p in cb.frames()]
        dying, other = (ca, cb) if on_a == [b"read"] else (cb, ca)
        self.assertEqual(sorted(on_a + on_b), [b"read", b"write"])
        other_frames = on_b if dying is ca else on_a
        dying.transport.abortConnection()
        self.assertNoResult(safe)
        resent = other.frames()
        self.assertEqual([p for _, _, p in resent], [b"read"])
        other.answer(RESP, resent[0][1], b"done")
        self.assertEqual(self.successResultOf(safe), b"done")
        # the non-idempotent one was on the other connection: still pending, never resent
        self.assertEqual(other_frames, [b"write"])
        self.assertNoResult(unsafe)
        other.transport.abortConnection()
        self.failureResultOf(unsafe, RequestLost)

    def test_request_waits_for_a_connection_up_to_its_timeout(self) -> None:
        pool, (a,) = self.make("a")
        waiting = pool.request(b"q", timeout=5)
        late = pool.request(b"late", timeout=2)
        self.clock.advance(2)
        self.failureResultOf(late, RequestTimeout)
        self.clock.advance(1)
        conn = a.accept()
        [(_, ident, payload)] = conn.frames()
        self.assertEqual(payload, b"q")
        conn.answer(RESP, ident, b"ok")
        self.assertEqual(self.successResultOf(waiting), b"ok")

    def test_all_endpoints_down_fails_at_once_naming_each(self) -> None:
        pool, (a, b) = self.make("a", "b")
        waiting = pool.request(b"q", timeout=30)
        a.refuse()
        self.assertNoResult(waiting)  # b may still come up
        b.refuse()
        error = self.failureResultOf(waiting, NoEndpointAvailable).value
        self.assertEqual(set(error.failures), {"a", "b"})
        self.assertIn("a: ConnectionRefusedError", str(error))
        self.assertIn("b refused", str(error))
        at_once = pool.request(b"q", timeout=30)
        self.failureResultOf(at_once, NoEndpointAvailable)
        self.clock.advance(1.0)
        b.accept()  # b is back: requests go there; a is still skipped
        d = pool.request(b"q")
        self.assertNoResult(d)
        self.assertTrue(pool.status()[0].down)
        self.assertFalse(pool.status()[1].down)

    def test_close_drains_in_flight_then_closes(self) -> None:
        pool, (a,) = self.make("a")
        conn = a.accept()
        d = pool.request(b"q")
        [(_, ident, _)] = conn.frames()
        closed = pool.close()
        self.assertNoResult(closed)
        self.failureResultOf(pool.request(b"more"), PoolClosed)
        conn.answer(RESP, ident, b"ok")
        self.assertEqual(self.successResultOf(d), b"ok")
        self.successResultOf(closed)
        self.assertIsNone(conn.transport.proto)  # closed
        self.assertFalse(pool.running)

    def test_close_timeout_fails_what_is_left(self) -> None:
        pool, (a,) = self.make("a")
        a.accept()
        d = pool.request(b"q")
        closed = pool.close(timeout=1)
        self.clock.advance(1)
        self.successResultOf(closed)
        self.failureResultOf(d, RequestLost)

    def test_wait_ready(self) -> None:
        pool, (a,) = self.make("a")
        ready = pool.wait_ready(timeout=3)
        self.assertNoResult(ready)
        a.accept()
        self.successResultOf(ready)
        self.successResultOf(pool.wait_ready())
        pool2, (b,) = self.make("b")
        never = pool2.wait_ready(timeout=1)
        b.refuse()
        self.clock.advance(1)
        self.assertIn(
            "b: ConnectionRefusedError", str(self.failureResultOf(never, NoEndpointAvailable).value)
        )

    def test_bad_arguments(self) -> None:
        with self.assertRaises(ValueError):
            FramePool([], reactor=Clock())
        with self.assertRaises(ValueError):
            FramePool([Endpoint("a")], connections=0, reactor=Clock())
        with self.assertRaises(ValueError):
            FramePool(["udp:host=127.0.0.1:port=9"], reactor=Clock())


class CommandLineTests(SynchronousTestCase):
    def parse(self, *argv: str) -> Any:
        from sockproto.cli.main import build_parser

        return build_parser().parse_args(list(argv))

    def test_endpoint_options_select_a_pool_without_repeats(self) -> None:
        from sockproto.cli.main import _pool_endpoints

        args = self.parse("frame", "127.0.0.1:1", "--endpoint", "127.0.0.1:2", "--endpoint", "127.0.0.1:1")
        self.assertEqual(_pool_endpoints(args, reactor), ["127.0.0.1:1", "127.0.0.1:2"])
        self.assertEqual(_pool_endpoints(self.parse("frame", "127.0.0.1:1"), reactor), [])
        one = self.parse("bench", "127.0.0.1:1", "--connections", "3")
        self.assertEqual((_pool_endpoints(one, reactor), one.connections), (["127.0.0.1:1"], 3))

    def test_pool_options_are_for_the_frame_service_only(self) -> None:
        from io import BytesIO, StringIO

        from sockproto.cli.commands import Streams
        from sockproto.cli.main import prepare

        streams = Streams(BytesIO(), StringIO())
        bad = [
            ("bench", "127.0.0.1:1", "--service", "halfclose", "--endpoint", "127.0.0.1:2"),
            ("frame", "127.0.0.1:1", "--endpoint", "udp:host=127.0.0.1:port=2", "--data", "x"),
        ]
        for argv in bad:
            with self.assertRaises(ValueError):
                prepare(self.parse(*argv), reactor, BytesIO(), streams)

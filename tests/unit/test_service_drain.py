"""ServerService: the order of a graceful stop, the drain deadline, the thread pool."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core import ErrorCode
from sockproto.frame.client import RemoteError
from sockproto.frame.server import FrameServerFactory
from sockproto.handlers import echo
from sockproto.serving.logs import LogLimiter
from sockproto.serving.metrics import ServiceMetrics
from sockproto.serving.service import ListeningService, ServerService
from sockproto.serving.threads import ThreadedHandler
from sockproto.testing import frame_pair


class Port:
    def __init__(self, log: list[str], name: str) -> None:
        self.log = log
        self.name = name

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 1)

    def stopListening(self) -> Deferred[None]:
        self.log.append(f"close {self.name}")
        return succeed(None)


class Endpoint:
    def __init__(self, log: list[str], name: str) -> None:
        self.log = log
        self.name = name

    def listen(self, factory: Any) -> Deferred[Port]:
        self.log.append(f"listen {self.name}")
        return succeed(Port(self.log, self.name))


class Factory:
    """A DrainableFactory that records the calls and drains when told."""

    def __init__(self, log: list[str], replies_through_port: bool = False) -> None:
        self.log = log
        self.replies_through_port = replies_through_port
        self.metrics = ServiceMetrics("test")
        self.limiter = LogLimiter(Clock())
        self.busy: Deferred[None] = Deferred()
        self.drains = 0

    def stop_accepting(self) -> None:
        self.log.append("stop accepting")

    def drain(self) -> Deferred[None]:
        self.drains += 1
        self.log.append("drain")
        d: Deferred[None] = Deferred()
        self.busy.addCallback(lambda _: d.callback(None) if not d.called else None)
        return d

    def abort(self) -> int:
        self.log.append("abort")
        self.busy.callback(None)
        return 3


class Extra(Service):
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def stopService(self) -> None:
        self.log.append("stop extra")
        super().stopService()  # type: ignore[no-untyped-call]


class ServerServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.log: list[str] = []
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.patch(ServerService, "_log", Logger(observer=self.events.append))
        self.patch(ListeningService, "_log", Logger(observer=self.events.append))

    def service(self, factory: Factory, **kw: Any) -> ServerService:
        endpoints: list[tuple[str, Any]] = [("a", Endpoint(self.log, "a")), ("b", Endpoint(self.log, "b"))]
        service = ServerService("test", factory, endpoints, clock=self.clock, **kw)
        Extra(self.log).setServiceParent(service)  # type: ignore[no-untyped-call]
        service.startService()
        return service

    def test_stream_order_listeners_first_then_drain_then_the_rest(self) -> None:
        factory = Factory(self.log)
        service = self.service(factory)
        stopped = service.stopService()
        self.assertEqual(self.log, ["listen a", "listen b", "stop accepting", "close a", "close b", "drain"])
        self.assertNoResult(stopped)
        factory.busy.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(self.log[-1], "stop extra")
        self.assertFalse(service.running)
        events = [e.get("sockproto_event") for e in self.events]
        self.assertIn("drain_start", events)
        self.assertIn("stopped", events)

    def test_udp_order_sockets_close_after_the_drain(self) -> None:
        factory = Factory(self.log, replies_through_port=True)
        stopped = self.service(factory).stopService()
        factory.busy.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(self.log[2:], ["stop accepting", "drain", "close a", "close b", "stop extra"])

    def test_the_deadline_aborts_what_remains(self) -> None:
        factory = Factory(self.log)
        stopped = self.service(factory, drain_timeout=10).stopService()
        self.clock.advance(9.9)
        self.assertNoResult(stopped)
        self.clock.advance(0.1)
        self.successResultOf(stopped)
        self.assertEqual(self.log[-3:], ["abort", "drain", "stop extra"])
        [aborted] = [e for e in self.events if e.get("sockproto_event") == "drain_aborted"]
        self.assertEqual(aborted["aborted"], 3)

    def test_a_zero_deadline_aborts_at_once(self) -> None:
        factory = Factory(self.log)
        stopped = self.service(factory, drain_timeout=0).stopService()
        self.clock.advance(0)
        self.successResultOf(stopped)
        self.assertIn("abort", self.log)

    def test_the_thread_pool_starts_first_and_stops_after_the_drain(self) -> None:
        factory = Factory(self.log)
        threads = ThreadedHandler(echo, 2)
        service = self.service(factory, threads=threads)
        self.assertTrue(threads.running)
        stopped = service.stopService()
        self.assertTrue(threads.running)  # handlers may still run during the drain
        factory.busy.callback(None)
        self.successResultOf(stopped)
        self.assertFalse(threads.running)

    def test_bad_drain_timeout(self) -> None:
        self.assertRaises(ValueError, ServerService, "x", Factory(self.log), [], drain_timeout=-1)


class GraceFactory(Factory):
    def fail_health_checks(self) -> None:
        self.log.append("fail health checks")


class DrainGraceTests(SynchronousTestCase):
    """``drain_grace``: keep listening and serving, failing health checks, before the stop."""

    setUp = ServerServiceTests.setUp
    service = ServerServiceTests.service

    def test_grace_comes_first_then_the_usual_stop(self) -> None:
        factory = GraceFactory(self.log)
        stopped = self.service(factory, drain_grace=2).stopService()
        self.assertEqual(self.log[2:], ["fail health checks"])  # still listening
        self.clock.advance(1.9)
        self.assertEqual(self.log[2:], ["fail health checks"])
        self.clock.advance(0.1)
        self.assertEqual(
            self.log[2:], ["fail health checks", "stop accepting", "close a", "close b", "drain"]
        )
        factory.busy.callback(None)
        self.successResultOf(stopped)
        self.assertIn("drain_grace", [e.get("sockproto_event") for e in self.events])

    def test_no_grace_by_default(self) -> None:
        factory = GraceFactory(self.log)
        self.service(factory).stopService()
        self.assertNotIn("fail health checks", self.log)


class FailingHealthChecksTests(SynchronousTestCase):
    """A frame service failing health checks: PING gets ERROR 5, requests are still served."""

    def test_requests_served_ping_refused_then_closed(self) -> None:
        factory = FrameServerFactory(echo)
        before = frame_pair(factory)  # connected, no byte yet: its state is made later
        used = frame_pair(factory)
        self.assertEqual(self.successResultOf(used.ping(b"x")), b"x")
        factory.fail_health_checks()
        later = frame_pair(factory)
        for pair in (before, used, later):
            self.assertEqual(self.successResultOf(pair.request(b"still served")), b"still served")
            error = self.failureResultOf(pair.ping(b"x"), RemoteError).value
            self.assertEqual(error.code, ErrorCode.OVERLOADED)
            self.assertTrue(pair.server.transport.disconnecting)  # type: ignore[union-attr]  # nothing owed

    def test_a_connection_with_answers_owed_stays_open(self) -> None:
        waiting: Deferred[bytes] = Deferred()
        factory = FrameServerFactory(lambda request: waiting)
        pair = frame_pair(factory)
        answer = pair.request(b"slow")
        factory.fail_health_checks()
        self.assertEqual(self.failureResultOf(pair.ping(b"x"), RemoteError).value.code, ErrorCode.OVERLOADED)
        self.assertFalse(pair.server.transport.disconnecting)  # type: ignore[union-attr]
        waiting.callback(b"done")
        pair.flush()
        self.assertEqual(self.successResultOf(answer), b"done")

"""Counters, rate-limited logs, connection tracking, thread-pool handlers, Prometheus rendering."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from sockproto.core import ErrorCode
from sockproto.core.datagram import DropReason
from sockproto.datagram.stats import DatagramStats
from sockproto.request import Request
from sockproto.serving import prometheus
from sockproto.serving.connections import ConnectionTracker
from sockproto.serving.logs import LogLimiter
from sockproto.serving.metrics import ServiceMetrics
from sockproto.serving.threads import ThreadedHandler


class LogLimiterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.log = Logger(observer=self.events.append)
        self.limiter = LogLimiter(self.clock, burst=3, interval=10)

    def emit(self, category: str = "flood") -> bool:
        return self.limiter.emit(self.log, category, LogLevel.warn, "bad thing from {peer}", peer="x")

    def test_at_most_burst_per_window_per_category(self) -> None:
        self.assertEqual([self.emit() for _ in range(5)], [True, True, True, False, False])
        self.assertTrue(self.emit("other"))
        self.assertEqual(self.limiter.suppressed, 2)
        self.assertEqual({e["sockproto_event"] for e in self.events}, {"flood", "other"})
        self.assertEqual(self.events[0]["peer"], "x")

    def test_the_next_window_reports_what_was_left_out(self) -> None:
        for _ in range(7):
            self.emit()
        self.clock.advance(10)
        self.assertTrue(self.emit())
        summary = self.events[3]
        self.assertTrue(summary["sockproto_suppressed"])
        self.assertEqual(summary["suppressed"], 4)
        self.assertEqual(self.events[4]["log_format"], "bad thing from {peer}")

    def test_flush_reports_and_forgets(self) -> None:
        for _ in range(4):
            self.emit()
        self.limiter.flush(self.log)
        self.assertEqual(self.events[-1]["suppressed"], 1)
        self.assertTrue(self.emit())

    def test_failures_keep_their_traceback(self) -> None:
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        self.assertTrue(self.limiter.failure(self.log, "handler_failed", "handler failed", failure))
        self.assertIs(self.events[0]["log_failure"], failure)
        self.assertEqual(self.events[0]["log_level"], LogLevel.critical)

    def test_burst_zero_logs_nothing(self) -> None:
        limiter = LogLimiter(self.clock, burst=0)
        self.assertFalse(limiter.emit(self.log, "x", LogLevel.info, "no"))
        self.assertEqual(self.events, [])
        self.assertRaises(ValueError, LogLimiter, self.clock, interval=0)


class MetricsTests(SynchronousTestCase):
    def test_counters(self) -> None:
        m = ServiceMetrics("frame")
        m.error(ErrorCode.TIMEOUT)
        m.requests += 2
        counts = m.as_dict()
        self.assertEqual((counts["errors"], counts["errors_timeout"], counts["requests"]), (1, 1, 2))
        self.assertIn("timeout=1", repr(m))

    def test_datagram_stats_are_service_metrics(self) -> None:
        s = DatagramStats()
        self.assertIsInstance(s, ServiceMetrics)
        s.requests += 1
        s.cache_hits += 2
        self.assertEqual((s.handled, s.from_cache, s.service), (1, 2, "datagram"))


class Connection:
    def __init__(self, tracker: ConnectionTracker[Any], idle: bool) -> None:
        self.tracker = tracker
        self.idle = idle
        self.aborted = False

    def drain(self) -> None:
        if self.idle:
            self.tracker.closed(self)

    def abort(self) -> None:
        self.aborted = True
        self.tracker.closed(self)


class TrackerTests(SynchronousTestCase):
    def test_limit_and_refusals(self) -> None:
        metrics = ServiceMetrics("t")
        tracker: ConnectionTracker[Any] = ConnectionTracker(metrics, 1)
        self.assertTrue(tracker.admits())
        tracker.opened(Connection(tracker, True))
        self.assertFalse(tracker.admits())
        self.assertEqual((metrics.connections_open, metrics.connections_refused), (1, 1))
        self.assertRaises(ValueError, ConnectionTracker, metrics, 0)

    def test_drain_closes_idle_ones_and_waits_for_the_others(self) -> None:
        tracker: ConnectionTracker[Any] = ConnectionTracker(ServiceMetrics("t"))
        idle, busy = Connection(tracker, True), Connection(tracker, False)
        tracker.opened(idle)
        tracker.opened(busy)
        drained = tracker.drain()
        self.assertEqual(tracker.open, {busy})
        self.assertFalse(tracker.admits())
        self.assertNoResult(drained)
        self.assertEqual(tracker.abort(), 1)
        self.assertTrue(busy.aborted)
        self.successResultOf(drained)

    def test_a_cancelled_wait_is_forgotten(self) -> None:
        tracker: ConnectionTracker[Any] = ConnectionTracker(ServiceMetrics("t"))
        tracker.opened(Connection(tracker, False))
        waiting = tracker.closed_all()
        waiting.cancel()
        self.failureResultOf(waiting)
        self.assertEqual(tracker.waiters, [])


class InlinePool:
    """Runs the work at once, in this thread, as a thread pool would in another."""

    started = joined = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started, self.joined = False, True

    def callInThreadWithCallback(
        self, on_result: Callable[..., None], f: Callable[..., Any], *a: Any
    ) -> None:
        try:
            result = f(*a)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class InlineReactor:
    def __init__(self) -> None:
        self.triggers: list[tuple[str, str, Any]] = []

    def callFromThread(self, f: Callable[..., Any], *a: Any) -> None:
        f(*a)

    def addSystemEventTrigger(self, phase: str, event: str, f: Any) -> None:
        self.triggers.append((phase, event, f))


class ThreadedHandlerTests(SynchronousTestCase):
    def handler(self, answer: Callable[[Request], Any]) -> ThreadedHandler:
        self.reactor = InlineReactor()
        threaded = ThreadedHandler(answer, 2, reactor=self.reactor)  # type: ignore[arg-type]
        threaded.pool = InlinePool()  # type: ignore[assignment]
        return threaded

    def test_a_pool_nobody_started_starts_and_stops_with_the_reactor(self) -> None:
        threaded = self.handler(lambda r: b"")
        threaded(Request.bare(b"", None))
        self.assertTrue(threaded.running)
        self.assertEqual([(p, e) for p, e, _ in self.reactor.triggers], [("during", "shutdown")])
        self.reactor.triggers[0][2]()
        self.assertFalse(threaded.running)

    def test_answers_through_a_deferred(self) -> None:
        d = self.handler(lambda r: r.payload.upper())(Request.bare(b"abc", None))
        self.assertIsInstance(d, Deferred)
        self.assertEqual(self.successResultOf(d), b"ABC")

    def test_failures_and_wrong_types_fail_the_deferred(self) -> None:
        self.failureResultOf(self.handler(lambda r: 1 / 0)(Request.bare(b"", None)), ZeroDivisionError)
        self.failureResultOf(self.handler(lambda r: "text")(Request.bare(b"", None)), TypeError)

    def test_start_and_stop(self) -> None:
        threaded = ThreadedHandler(lambda r: b"", 1)
        self.assertFalse(threaded.running)
        threaded.start()
        self.assertTrue(threaded.running)
        threaded.stop()
        self.assertFalse(threaded.running)
        self.assertIn("1 thread", repr(threaded))
        self.assertRaises(ValueError, ThreadedHandler, lambda r: b"", 0)


class PrometheusTests(SynchronousTestCase):
    def setUp(self) -> None:
        if not prometheus.available():
            raise SkipTest("prometheus_client is not installed (pip install 'sockproto[metrics]')")

    def test_rendering(self) -> None:
        from prometheus_client import generate_latest

        frame, udp = ServiceMetrics("frame"), DatagramStats()
        frame.requests, frame.connections_open = 5, 2
        frame.error(ErrorCode.OVERLOADED)
        udp.received = 9
        udp.drop(DropReason.RATE_LIMITED)
        text = generate_latest(prometheus.metrics_registry([frame, udp], process=False)).decode()
        self.assertIn('sockproto_requests_total{service="frame"} 5.0', text)
        self.assertIn('sockproto_connections_open{service="frame"} 2.0', text)
        self.assertIn('sockproto_errors_total{code="5",name="overloaded",service="frame"} 1.0', text)
        self.assertIn('sockproto_datagrams_received_total{service="datagram"} 9.0', text)
        self.assertIn('sockproto_datagrams_dropped_total{reason="rate_limited",service="datagram"} 1.0', text)
        self.assertNotIn('sockproto_datagrams_received_total{service="frame"}', text)

"""sockproto.cli.bench: percentiles, the report, the progress bar and the load generator."""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sockproto.cli.bench import BenchResult, LoadGenerator, Progress, percentile
from sockproto.cli.errors import CommandError, Status
from sockproto.core import ErrorCode
from sockproto.frame.client import RemoteError


class PercentileTests(SynchronousTestCase):
    def test_nearest_rank(self) -> None:
        values = [float(i) for i in range(1, 101)]
        self.assertEqual([percentile(values, p) for p in (50, 90, 99, 100)], [50.0, 90.0, 99.0, 100.0])
        self.assertEqual(percentile([3.0], 50), 3.0)
        self.assertEqual(percentile([1.0, 2.0], 50), 1.0)
        self.assertEqual(percentile([1.0, 2.0], 51), 2.0)
        self.assertEqual(percentile([], 99), 0.0)
        self.assertEqual(percentile([1.0, 2.0, 3.0], 0), 1.0)


class ResultTests(SynchronousTestCase):
    def result(self, **kw: Any) -> BenchResult:
        r = BenchResult("frame", "127.0.0.1:8750", 4, 2, 100, **kw)
        return r

    def test_summary_figures(self) -> None:
        r = self.result(
            seconds=2.0, latencies=[0.001, 0.002, 0.003, 0.010], bytes_sent=400, bytes_received=600
        )
        s = r.summary()
        self.assertEqual((s["answered"], s["requests_per_s"], s["mb_per_s"]), (4, 2.0, 0.0005))
        self.assertEqual(s["latency_ms"], {"p50": 2.0, "p90": 10.0, "p99": 10.0, "max": 10.0})
        self.assertEqual(r.status, Status.ANSWERED)
        self.assertEqual(json.loads(r.json()), s)
        self.assertEqual(r.json().count("\n"), 1)

    def test_text_report(self) -> None:
        text = self.result(seconds=0.5, latencies=[0.001] * 4).text()
        self.assertIn("frame at 127.0.0.1:8750: 4 requests of 100 bytes, 2 concurrent", text)
        self.assertIn("8.0 requests/s", text)
        self.assertIn("p50 1.000  p90 1.000  p99 1.000  max 1.000", text)
        self.assertNotIn("failed", text)

    def test_failures_decide_the_status(self) -> None:
        self.assertEqual(self.result(server_errors=1).status, Status.SERVER_ERROR)
        self.assertEqual(self.result(server_errors=1, no_answer=1).status, Status.NO_ANSWER)
        self.assertEqual(self.result(not_sent=1).status, Status.NO_ANSWER)
        text = self.result(server_errors=1, no_answer=2, first_error="boom").text()
        self.assertIn("failed      3 (1 server ERROR, 2 no answer, 0 not sent); first: boom", text)

    def test_no_division_by_zero(self) -> None:
        self.assertEqual(self.result().summary()["requests_per_s"], 0.0)


class ProgressTests(SynchronousTestCase):
    def test_draw_and_clear(self) -> None:
        stream = io.StringIO()
        now = [0.0]
        progress = Progress(stream, 200, now=lambda: now[0])
        now[0] = 2.0
        progress.draw(100)
        drawn = stream.getvalue()
        self.assertTrue(drawn.startswith("\r[" + "#" * 15 + "." * 15 + "] 100/200"), drawn)
        self.assertIn("50%", drawn)
        self.assertIn("50 req/s", drawn)
        self.assertNotIn("\n", drawn)
        progress.clear()
        self.assertTrue(stream.getvalue().endswith("\r\x1b[K"))
        progress.clear()  # nothing drawn since: nothing written
        self.assertEqual(stream.getvalue().count("\x1b[K"), 1)


class ScriptedSession:
    """Answers from a script of outcomes (bytes, an exception, or "wait"); records what it sent."""

    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = outcomes
        self.sent: list[bytes] = []
        self.closed = False
        self.waiting: list[Deferred[bytes]] = []

    def fatal(self, error: Exception) -> bool:
        return not isinstance(error, RemoteError)

    def close(self) -> None:
        self.closed = True

    def send(self, payload: bytes) -> Deferred[bytes]:
        self.sent.append(payload)
        outcome = self.outcomes.pop(0) if self.outcomes else b"ok"
        d: Deferred[bytes] = Deferred()
        if outcome == "wait":
            self.waiting.append(d)
        elif isinstance(outcome, Exception):
            d.errback(outcome)
        else:
            d.callback(outcome)
        return d


class LoadGeneratorTests(SynchronousTestCase):
    def run_bench(
        self, sessions: list[ScriptedSession], requests: int, concurrency: int, **kw: Any
    ) -> tuple[Deferred[BenchResult], BenchResult]:
        pool = list(sessions)

        async def open_session() -> Any:
            session = pool.pop(0)
            if isinstance(session, Exception):
                raise session
            return session

        result = BenchResult("frame", "h:1", requests, concurrency, 3)
        generator = LoadGenerator(Clock(), open_session, b"abc", result, **kw)
        return Deferred.fromCoroutine(generator.run()), result

    def test_every_request_answered(self) -> None:
        sessions = [ScriptedSession([]), ScriptedSession([])]
        d, result = self.run_bench(sessions, 5, 2)
        self.assertIs(self.successResultOf(d), result)
        self.assertEqual(sum(len(s.sent) for s in sessions), 5)
        self.assertEqual(
            (result.answered, result.failed, result.bytes_sent, result.bytes_received), (5, 0, 15, 10)
        )
        self.assertTrue(all(s.closed for s in sessions))
        self.assertEqual(result.status, Status.ANSWERED)

    def test_concurrency_is_the_number_in_flight(self) -> None:
        sessions = [ScriptedSession(["wait", "wait"]) for _ in range(3)]
        d, _result = self.run_bench(sessions, 6, 3)
        self.assertEqual([len(s.sent) for s in sessions], [1, 1, 1])
        sessions[1].waiting[0].callback(b"x")
        self.assertEqual([len(s.sent) for s in sessions], [1, 2, 1])
        while any(not w.called for s in sessions for w in s.waiting):
            for s in sessions:
                for w in list(s.waiting):
                    if not w.called:
                        w.callback(b"x")
        self.assertEqual(self.successResultOf(d).answered, 6)

    def test_no_more_workers_than_requests(self) -> None:
        sessions = [ScriptedSession([]) for _ in range(2)]
        d, _result = self.run_bench(sessions, 1, 8)
        self.successResultOf(d)
        self.assertEqual([len(s.sent) for s in sessions], [1, 0])
        self.assertEqual([s.closed for s in sessions], [True, False])  # the second was never opened

    def test_server_errors_counted_and_the_worker_goes_on(self) -> None:
        error = RemoteError(ErrorCode.HANDLER_FAILED, "boom")
        d, result = self.run_bench([ScriptedSession([error, b"ok", error])], 4, 1)
        self.successResultOf(d)
        self.assertEqual((result.answered, result.server_errors, result.no_answer), (2, 2, 0))
        self.assertEqual(result.first_error, "server error 4 (HANDLER_FAILED): boom")
        self.assertEqual(result.status, Status.SERVER_ERROR)

    def test_fatal_failure_stops_the_worker_others_take_the_rest(self) -> None:
        dead = ScriptedSession([ConnectionLost("reset")])
        alive = ScriptedSession(["wait"])
        d, result = self.run_bench([dead, alive], 5, 2)
        alive.waiting[0].callback(b"x")
        self.successResultOf(d)
        self.assertEqual((len(dead.sent), len(alive.sent)), (1, 4))
        self.assertEqual((result.answered, result.no_answer, result.not_sent), (4, 1, 0))

    def test_every_worker_dead_leaves_requests_not_sent(self) -> None:
        d, result = self.run_bench([ScriptedSession([ConnectionLost("reset")])], 10, 1)
        self.successResultOf(d)
        self.assertEqual((result.no_answer, result.not_sent, result.status), (1, 9, Status.NO_ANSWER))

    def test_session_that_cannot_open_aborts_the_run(self) -> None:
        good = ScriptedSession([])
        d, _result = self.run_bench([good, ConnectionRefusedError("nope")], 10, 2)  # type: ignore[list-item]
        failure = self.failureResultOf(d, CommandError)
        self.assertEqual(failure.value.status, Status.NO_ANSWER)
        self.assertIn("could not connect to h:1", failure.value.message)
        self.assertTrue(good.closed)
        self.assertEqual(good.sent, [])

    def test_latency_measured_with_the_given_clock(self) -> None:
        now = [0.0]
        session = ScriptedSession(["wait"])
        d, result = self.run_bench([session], 1, 1, now=lambda: now[0])
        now[0] = 0.25
        session.waiting[0].callback(b"x")
        self.successResultOf(d)
        self.assertEqual((result.latencies, result.seconds), ([0.25], 0.25))

    def test_progress_drawn_while_running_and_cleared(self) -> None:
        stream = io.StringIO()
        clock = Clock()
        session = ScriptedSession(["wait", "wait"])
        result = BenchResult("frame", "h:1", 2, 1, 3)

        async def open_session() -> Any:
            return session

        progress = Progress(stream, 2, now=clock.seconds)
        d = Deferred.fromCoroutine(
            LoadGenerator(clock, open_session, b"abc", result, progress=progress).run()
        )
        self.assertIn("0/2", stream.getvalue())
        session.waiting[0].callback(b"x")
        clock.advance(0.1)
        self.assertIn("1/2", stream.getvalue())
        self.assertNoResult(d)
        session.waiting[1].callback(b"x")
        self.successResultOf(d)
        self.assertTrue(stream.getvalue().endswith("\r\x1b[K"))
        self.assertEqual(clock.getDelayedCalls(), [])

"""Frame server limits: connections, idle and handler timeouts, drain, metrics, log rate."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from sockproto.core import INT32, ErrorCode, HeaderSpec, Kind, decode_error
from sockproto.frame.protocol import FrameServerProtocol
from sockproto.frame.refusal import LINGER, MAX_LINGERING, FrameRefusal, Lingering
from sockproto.frame.server import FrameServerFactory
from sockproto.handlers import echo
from sockproto.serving.stream import FIRST_READ_GRACE
from sockproto.testing import frame_exchange, frame_pair
from sockproto.testing.memory import connect_protocols

from .stream_peers import Peer, Wire, request


@implementer(IHalfCloseableProtocol)
class StubbornPeer(Peer):
    """Takes the server's FIN without closing its own side."""

    def readConnectionLost(self) -> None:
        pass

    def writeConnectionLost(self) -> None:
        pass


class Case(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.patch(FrameServerProtocol, "_log", Logger(observer=self.events.append))
        self.patch(FrameServerFactory, "_log", Logger(observer=self.events.append))

    def factory(self, handler: Any = echo, **kw: Any) -> FrameServerFactory:
        return FrameServerFactory(handler, clock=self.clock, **kw)

    def logged(self, category: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("sockproto_event") == category]


class MaxConnectionsTests(Case):
    def test_over_the_limit_gets_error_5_then_close_and_others_are_unaffected(self) -> None:
        factory = self.factory(max_connections=2)
        first, second = Wire(factory), Wire(factory)
        third = Wire(factory)
        [refusal] = third.frames()
        self.assertEqual((refusal.kind, refusal.id), (Kind.ERROR, 0))
        code, message = decode_error(refusal.payload)
        self.assertEqual(code, ErrorCode.OVERLOADED)
        self.assertIn("too many connections (the limit is 2)", message)
        self.assertTrue(third.closed)
        self.assertFalse(third.reset)
        for wire in (first, second):
            wire.send(request(b"still served"))
            self.assertEqual(wire.frames()[-1].payload, b"still served")
        m = factory.metrics
        self.assertEqual((m.connections_open, m.connections_total, m.connections_refused), (2, 2, 1))
        [event] = self.logged("connection_refused")
        self.assertEqual(event["log_level"], LogLevel.warn)

    def test_a_closed_connection_frees_its_place(self) -> None:
        factory = self.factory(max_connections=1)
        first = Wire(factory)
        first.connection.client_transport.loseConnection()
        first.connection.flush()
        self.assertEqual(factory.metrics.connections_open, 0)
        second = Wire(factory)
        second.send(request(b"x"))
        self.assertEqual(second.frames()[0].payload, b"x")

    def test_what_a_refused_client_sent_is_discarded(self) -> None:
        factory = self.factory(max_connections=1)
        calls: list[bytes] = []
        factory.handler = lambda r: calls.append(r.payload) or b""  # type: ignore[assignment, func-returns-value]
        Wire(factory)
        refused = Wire(factory)
        refused.send(request(b"please"))
        self.assertEqual(calls, [])
        self.assertEqual(len(refused.frames()), 1)

    def test_without_an_error_channel_the_refusal_only_closes(self) -> None:
        factory = self.factory(header=INT32, max_connections=1)
        Wire(factory, INT32)
        refused = Wire(factory, INT32)
        self.assertEqual(bytes(refused.peer.data), b"")
        self.assertTrue(refused.closed)

    def test_the_refusal_lingers_at_most_linger_seconds(self) -> None:
        clock = Clock()
        lingering = Lingering()
        refusal = FrameRefusal(INT32, "busy", clock, lingering)
        connection = connect_protocols(refusal, StubbornPeer())
        connection.flush()
        self.assertTrue(connection.server_transport.write_closed)  # FIN sent, still reading
        self.assertFalse(connection.server_transport.disconnected)
        self.assertEqual(lingering.count, 1)
        clock.advance(LINGER)
        connection.flush()
        self.assertTrue(connection.server_transport.disconnected)
        self.assertEqual(lingering.count, 0)

    def test_too_many_lingering_refusals_close_at_once(self) -> None:
        lingering = Lingering()
        lingering.count = MAX_LINGERING
        connection = connect_protocols(FrameRefusal(INT32, "busy", Clock(), lingering), StubbornPeer())
        connection.flush()
        self.assertTrue(connection.server_transport.disconnected)
        self.assertEqual(lingering.count, MAX_LINGERING)

    def test_refused_while_shutting_down(self) -> None:
        factory = self.factory()
        factory.stop_accepting()
        [refusal] = Wire(factory).frames()
        self.assertEqual(decode_error(refusal.payload), (ErrorCode.OVERLOADED, "the server is shutting down"))
        self.assertEqual(factory.metrics.connections_refused, 1)


class IdleTimeoutTests(Case):
    def test_closed_after_idle_timeout(self) -> None:
        wire = Wire(self.factory(idle_timeout=10))
        self.clock.advance(9.9)
        self.assertFalse(wire.closed)
        self.clock.advance(0.1)
        wire.connection.flush()
        self.assertTrue(wire.closed)
        self.assertFalse(wire.reset)  # a clean close
        self.assertEqual(len(self.logged("idle_timeout")), 1)

    def test_a_ping_counts_as_activity(self) -> None:
        wire = Wire(self.factory(idle_timeout=10))
        self.clock.advance(8)
        wire.send(request(b"", kind=Kind.PING))
        self.clock.advance(8)
        self.assertFalse(wire.closed)
        self.clock.advance(2)
        wire.connection.flush()
        self.assertTrue(wire.closed)

    def test_a_frame_dribbled_byte_by_byte_does_not_keep_the_connection(self) -> None:
        wire = Wire(self.factory(idle_timeout=10))
        for byte in request(b"slowloris")[:15]:
            wire.send(bytes([byte]))
            self.clock.advance(1)
        wire.connection.flush()
        self.assertTrue(wire.closed)

    def test_not_idle_while_an_answer_is_owed(self) -> None:
        d: Deferred[bytes] = Deferred()
        wire = Wire(self.factory(lambda r: d, idle_timeout=10))
        wire.send(request(b"slow"))
        self.clock.advance(25)
        self.assertFalse(wire.closed)
        d.callback(b"done")
        wire.connection.flush()
        self.assertEqual(wire.frames()[0].payload, b"done")
        self.clock.advance(10)
        wire.connection.flush()
        self.assertTrue(wire.closed)

    def test_a_client_that_does_not_read_is_reset_one_timeout_later(self) -> None:
        wire = Wire(self.factory(idle_timeout=10))
        wire.connection.client_transport.pauseProducing()  # the client stops reading
        wire.send(request(b"x" * 200_000))
        self.clock.advance(10)
        wire.connection.flush()
        self.assertFalse(wire.closed)  # the clean close waits for the write buffer
        self.clock.advance(10)
        wire.connection.flush()
        self.assertTrue(wire.reset)

    def test_no_timer_without_idle_timeout(self) -> None:
        Wire(self.factory())
        self.assertEqual(self.clock.getDelayedCalls(), [])


class HandlerTimeoutTests(Case):
    def test_overrun_gets_error_6_and_the_late_result_is_discarded(self) -> None:
        d: Deferred[bytes] = Deferred()  # no canceller, like a thread's: it cannot stop
        factory = self.factory(lambda r: d, handler_timeout=5)
        wire = Wire(factory)
        wire.send(request(b"slow", ident=7))
        self.clock.advance(4.9)
        self.assertEqual(wire.frames(), [])
        self.clock.advance(0.1)
        wire.connection.flush()
        [error] = wire.frames()
        self.assertEqual((error.kind, error.id), (Kind.ERROR, 7))
        self.assertEqual(
            decode_error(error.payload), (ErrorCode.TIMEOUT, "the handler did not answer within 5 s")
        )
        d.callback(b"late")  # discarded: the cancelled Deferred ignores it
        wire.connection.flush()
        self.assertEqual(len(wire.frames()), 1)
        self.assertEqual(factory.metrics.errors[ErrorCode.TIMEOUT], 1)
        self.assertEqual(factory.metrics.in_flight, 0)
        self.assertFalse(wire.closed)

    def test_the_handler_deferred_is_cancelled(self) -> None:
        cancelled: list[object] = []
        d: Deferred[bytes] = Deferred(cancelled.append)
        wire = Wire(self.factory(lambda r: d, handler_timeout=5))
        wire.send(request(b"slow"))
        self.clock.advance(5)
        self.assertEqual(cancelled, [d])
        wire.connection.flush()
        self.assertEqual(decode_error(wire.frames()[0].payload)[0], ErrorCode.TIMEOUT)

    def test_a_coroutine_is_cancelled_at_its_await(self) -> None:
        seen: list[type] = []
        never: Deferred[bytes] = Deferred()

        async def handler(r: Any) -> bytes:
            try:
                return await never
            except CancelledError as e:
                seen.append(type(e))
                raise

        wire = Wire(self.factory(handler, handler_timeout=1))
        wire.send(request(b"x"))
        self.clock.advance(1)
        wire.connection.flush()
        self.assertEqual(seen, [CancelledError])
        self.assertEqual(decode_error(wire.frames()[0].payload)[0], ErrorCode.TIMEOUT)

    def test_in_time_the_answer_goes_out_and_the_timer_is_gone(self) -> None:
        d: Deferred[bytes] = Deferred()
        wire = Wire(self.factory(lambda r: d, handler_timeout=5))
        wire.send(request(b"x"))
        d.callback(b"fast enough")
        wire.connection.flush()
        self.assertEqual(wire.frames()[0].payload, b"fast enough")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_without_an_error_channel_the_connection_closes_after_earlier_answers(self) -> None:
        slow: Deferred[bytes] = Deferred()
        answers = iter([b"first", slow])
        wire = Wire(self.factory(lambda r: next(answers), header=INT32, handler_timeout=2), INT32)
        wire.send(INT32.encode(b"a") + INT32.encode(b"b"))
        self.clock.advance(2)
        wire.connection.flush()
        self.assertEqual([f.payload for f in wire.frames()], [b"first"])
        self.assertTrue(wire.closed)


class MetricsTests(Case):
    def test_one_read_counts_requests_answers_pings_and_bytes(self) -> None:
        factory = self.factory()
        wire = Wire(factory)
        data = request(b"a", 1) + request(b"", 2, Kind.PING) + request(b"bb", 3) + request(b"ccc", 4)
        wire.send(data)
        m = factory.metrics
        self.assertEqual((m.requests, m.answers, m.pings), (3, 3, 1))
        self.assertEqual((m.bytes_in, m.bytes_out), (len(data), len(wire.peer.data)))
        self.assertEqual((m.connections_open, m.connections_total), (1, 1))

    def test_errors_by_code_and_in_flight(self) -> None:
        pending: Deferred[bytes] = Deferred()

        def handler(r: Any) -> Any:
            if r.payload == b"boom":
                raise ValueError("boom")
            return pending if r.payload == b"wait" else r.payload

        factory = self.factory(handler, max_payload=8)
        wire = Wire(factory)
        wire.send(request(b"boom", 1) + request(b"wait", 2) + request(b"x" * 9, 3) + request(b"ok", 4))
        wire.send(request(b"", 5, Kind.RESPONSE))
        m = factory.metrics
        self.assertEqual(m.errors[ErrorCode.HANDLER_FAILED], 1)
        self.assertEqual(m.errors[ErrorCode.TOO_LARGE], 1)
        self.assertEqual(m.errors[ErrorCode.UNEXPECTED_KIND], 1)
        self.assertEqual((m.requests, m.answers, m.in_flight), (5, 1, 1))
        pending.callback(b"done")
        self.assertEqual((m.answers, m.in_flight), (2, 0))
        self.assertEqual(m.requests, m.answers + sum(m.errors.values()) + m.abandoned)
        wire.send(b"XX" + bytes(10))  # a malformed header: ERROR 1 and close
        self.assertEqual(m.errors[ErrorCode.PROTOCOL_ERROR], 1)
        self.assertEqual(m.requests, m.answers + sum(m.errors.values()) + m.abandoned)
        self.assertEqual(len(self.logged("protocol_error")), 1)
        self.assertEqual(len(self.logged("handler_failed")), 1)

    def test_a_lost_connection_abandons_what_runs(self) -> None:
        d: Deferred[bytes] = Deferred()
        factory = self.factory(lambda r: d)
        wire = Wire(factory)
        wire.send(request(b"x"))
        wire.connection.client_transport.abortConnection()
        wire.connection.flush()
        m = factory.metrics
        self.assertEqual((m.requests, m.abandoned, m.in_flight, m.connections_open), (1, 1, 0, 0))

    def test_as_dict_and_repr(self) -> None:
        factory = self.factory()
        Wire(factory).send(request(b"x"))
        counts = factory.metrics.as_dict()
        self.assertEqual((counts["requests"], counts["answers"], counts["errors_timeout"]), (1, 1, 0))
        self.assertIn("frame", repr(factory.metrics))


class LogRateTests(Case):
    def test_a_flood_of_bad_frames_logs_a_bounded_number_of_lines(self) -> None:
        factory = self.factory()
        for _ in range(100):
            Wire(factory).send(b"XX" + bytes(10))
        self.assertEqual(factory.metrics.errors[ErrorCode.PROTOCOL_ERROR], 100)
        self.assertEqual(len(self.logged("protocol_error")), factory.limiter.burst)
        self.assertEqual(factory.limiter.suppressed, 3 * (100 - factory.limiter.burst))  # open, error, close
        self.clock.advance(factory.limiter.interval)
        Wire(factory).send(b"XX" + bytes(10))
        summaries = [e for e in self.logged("protocol_error") if e.get("sockproto_suppressed")]
        self.assertEqual(summaries[0]["suppressed"], 80)


class HalfCloseTests(Case):
    def test_requests_then_shutdown_wr_get_their_answers_then_close(self) -> None:
        d: Deferred[bytes] = Deferred()
        wire = Wire(self.factory(lambda r: d if r.payload == b"slow" else r.payload))
        wire.send(request(b"fast", 1) + request(b"slow", 2) + request(b"cut short", 3)[:14])
        wire.half_close()
        self.assertFalse(wire.closed)  # an answer is still owed
        d.callback(b"slow done")
        wire.connection.flush()
        self.assertEqual([(f.id, f.payload) for f in wire.frames()], [(1, b"fast"), (2, b"slow done")])
        self.assertTrue(wire.closed)
        self.assertFalse(wire.reset)


class DrainTests(Case):
    def test_an_idle_connection_closes_after_the_first_read_grace(self) -> None:
        factory = self.factory()
        wire = Wire(factory)
        drained = factory.drain()
        wire.connection.flush()
        self.assertFalse(wire.closed)  # its request may be in the socket's buffer, not read yet
        self.clock.advance(FIRST_READ_GRACE)
        wire.connection.flush()
        self.assertTrue(wire.closed)
        self.assertFalse(wire.reset)
        self.successResultOf(drained)

    def test_a_request_read_within_the_first_read_grace_is_answered(self) -> None:
        factory = self.factory()
        wire = Wire(factory)
        drained = factory.drain()
        wire.send(request(b"just in time", 7))  # accepted before the drain, read after it
        self.clock.advance(FIRST_READ_GRACE)
        wire.connection.flush()
        self.assertEqual([(f.id, f.payload) for f in wire.frames()], [(7, b"just in time")])
        self.assertTrue(wire.closed)
        self.successResultOf(drained)

    def test_requests_received_are_answered_then_the_connection_closes(self) -> None:
        d: Deferred[bytes] = Deferred()
        factory = self.factory(lambda r: d if r.payload == b"slow" else r.payload)
        wire = Wire(factory)
        wire.send(request(b"slow", 1))
        drained = factory.drain()
        wire.send(request(b"late", 2))  # after the drain started: not read
        self.assertNoResult(drained)
        self.assertFalse(wire.closed)
        d.callback(b"answered")
        wire.connection.flush()
        self.assertEqual([(f.id, f.payload) for f in wire.frames()], [(1, b"answered")])
        self.assertTrue(wire.closed)
        self.successResultOf(drained)

    def test_a_frame_partly_received_is_completed_and_answered(self) -> None:
        factory = self.factory()
        wire = Wire(factory)
        frame = request(b"half here, half later")
        wire.send(frame[:15])
        drained = factory.drain()
        self.assertFalse(wire.closed)
        wire.send(frame[15:])
        self.assertEqual(wire.frames()[0].payload, b"half here, half later")
        self.assertTrue(wire.closed)
        self.successResultOf(drained)

    def test_abort_resets_what_remains(self) -> None:
        d: Deferred[bytes] = Deferred()
        factory = self.factory(lambda r: d)
        wire = Wire(factory)
        wire.send(request(b"forever"))
        drained = factory.drain()
        self.assertEqual(factory.abort(), 1)
        wire.connection.flush()
        self.assertTrue(wire.reset)
        self.successResultOf(drained)
        self.assertEqual(factory.metrics.abandoned, 1)


class NegativeAdjustmentTests(SynchronousTestCase):
    """An answer shorter than a negative length adjustment allows cannot be framed (issue 12)."""

    SPEC = HeaderSpec("neg", "length:I", length_adjustment=-4)

    def test_short_answer_closes_instead_of_crashing(self) -> None:
        pair = frame_pair(lambda request: b"ab", header=self.SPEC)
        answer = pair.request(b"long enough")
        self.failureResultOf(answer)  # no error channel: the connection closes
        self.assertTrue(pair.server.transport.disconnecting)  # type: ignore[union-attr]
        self.assertEqual(pair.server.metrics.errors[ErrorCode.TOO_LARGE], 1)

    def test_long_enough_answer(self) -> None:
        pair = frame_pair(lambda request: request.payload, header=self.SPEC)
        self.assertEqual(self.successResultOf(pair.request(b"four or more")), b"four or more")

    def test_short_spf1_like_answer_gets_error_2(self) -> None:
        spec = HeaderSpec(
            "kinded", "magic:2s kind:B id:I length:I", constants={"magic": b"KD"}, length_adjustment=-1
        )
        events = frame_exchange(lambda request: b"", spec.encode(b"xyz", kind=1, id=7), header=spec)
        self.assertEqual([(e.kind, e.id) for e in events], [(3, 7)])

"""Half-close server limits: connections, handler timeout, drain, metrics."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core import ErrorCode
from sockproto.halfclose.server import (
    DEFAULT_HANDLER_TIMEOUT,
    HalfCloseServerFactory,
    HalfCloseServerProtocol,
)
from sockproto.handlers import echo
from sockproto.serving.stream import FIRST_READ_GRACE

from .stream_peers import Wire


class Case(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.patch(HalfCloseServerProtocol, "_log", Logger(observer=self.events.append))
        self.patch(HalfCloseServerFactory, "_log", Logger(observer=self.events.append))

    def factory(self, handler: Any = echo, **kw: Any) -> HalfCloseServerFactory:
        return HalfCloseServerFactory(handler, clock=self.clock, **kw)

    def ask(self, factory: HalfCloseServerFactory, payload: bytes) -> Wire:
        wire = Wire(factory)
        wire.send(payload)
        wire.half_close()
        return wire


class MaxConnectionsTests(Case):
    def test_over_the_limit_is_reset_at_once_and_others_are_unaffected(self) -> None:
        factory = self.factory(max_connections=1)
        first = Wire(factory)
        refused = Wire(factory)
        self.assertTrue(refused.reset)
        self.assertEqual(bytes(refused.peer.data), b"")
        first.send(b"still served")
        first.half_close()
        self.assertEqual(bytes(first.peer.data), b"still served")
        m = factory.metrics
        self.assertEqual((m.connections_refused, m.connections_total, m.connections_open), (1, 1, 0))
        self.assertEqual(len([e for e in self.events if e.get("sockproto_event") == "connection_refused"]), 1)

    def test_refused_while_shutting_down(self) -> None:
        factory = self.factory()
        factory.stop_accepting()
        self.assertTrue(Wire(factory).reset)


class HandlerTimeoutTests(Case):
    def test_overrun_resets_and_cancels(self) -> None:
        cancelled: list[object] = []
        d: Deferred[bytes] = Deferred(cancelled.append)
        factory = self.factory(lambda r: d, handler_timeout=3, request_timeout=None)
        wire = self.ask(factory, b"slow")
        self.clock.advance(2.9)
        self.assertFalse(wire.reset)
        self.clock.advance(0.1)
        wire.connection.flush()
        self.assertTrue(wire.reset)
        self.assertEqual(cancelled, [d])
        self.assertEqual(factory.metrics.errors[ErrorCode.TIMEOUT], 1)
        self.assertEqual(factory.metrics.in_flight, 0)
        self.assertEqual(len([e for e in self.events if e.get("sockproto_event") == "handler_timeout"]), 1)

    def test_default_is_the_plugins_30_s(self) -> None:
        """Issue 12 item 4: a handler that never answers does not hold its socket forever."""
        factory = self.factory(lambda r: Deferred(), request_timeout=None)
        self.assertEqual(factory.handler_timeout, DEFAULT_HANDLER_TIMEOUT)
        self.assertEqual(HalfCloseServerProtocol(echo).handler_timeout, DEFAULT_HANDLER_TIMEOUT)
        wire = self.ask(factory, b"never answered")
        self.clock.advance(DEFAULT_HANDLER_TIMEOUT - 0.1)
        self.assertFalse(wire.reset)
        self.clock.advance(0.1)
        wire.connection.flush()
        self.assertTrue(wire.reset)
        self.assertEqual(factory.metrics.errors[ErrorCode.TIMEOUT], 1)

    def test_none_is_still_no_limit(self) -> None:
        factory = self.factory(lambda r: Deferred(), request_timeout=None, handler_timeout=None)
        wire = self.ask(factory, b"x")
        self.clock.advance(10 * DEFAULT_HANDLER_TIMEOUT)
        self.assertFalse(wire.reset)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(factory.metrics.in_flight, 1)

    def test_in_time_is_answered(self) -> None:
        d: Deferred[bytes] = Deferred()
        wire = self.ask(self.factory(lambda r: d, handler_timeout=3), b"x")
        d.callback(b"answer")
        wire.connection.flush()
        self.assertEqual(bytes(wire.peer.data), b"answer")
        self.assertFalse(wire.reset)


class MetricsTests(Case):
    def test_every_connection_is_one_request_with_one_outcome(self) -> None:
        def handler(r: Any) -> bytes:
            if r.payload == b"boom":
                raise ValueError("boom")
            return r.payload.upper()

        factory = self.factory(handler, max_request=8)
        self.ask(factory, b"abc")
        self.ask(factory, b"boom")
        self.ask(factory, b"x" * 9)
        silent = Wire(factory)  # never completes its request
        self.clock.advance(factory.request_timeout or 0)
        silent.connection.flush()
        self.assertTrue(silent.reset)
        gone = Wire(factory)
        gone.send(b"a")
        gone.connection.client_transport.abortConnection()
        gone.connection.flush()
        m = factory.metrics
        self.assertEqual(m.requests, 5)
        self.assertEqual(m.answers, 1)
        self.assertEqual(
            (m.errors[ErrorCode.HANDLER_FAILED], m.errors[ErrorCode.TOO_LARGE], m.errors[ErrorCode.TIMEOUT]),
            (1, 1, 1),
        )
        self.assertEqual(m.abandoned, 1)
        self.assertEqual(m.requests, m.answers + sum(m.errors.values()) + m.abandoned)
        self.assertEqual(m.bytes_out, 3)
        self.assertEqual(m.connections_open, 0)


class DrainTests(Case):
    def test_idle_is_reset_busy_ones_finish(self) -> None:
        d: Deferred[bytes] = Deferred()
        factory = self.factory(lambda r: d if r.payload == b"slow" else r.payload)
        idle = Wire(factory)
        sending = Wire(factory)
        sending.send(b"first half ")
        busy = self.ask(factory, b"slow")
        drained = factory.drain()
        idle.connection.flush()
        self.assertFalse(idle.reset)  # its request may be in the socket's buffer, not read yet
        self.clock.advance(FIRST_READ_GRACE)
        idle.connection.flush()
        self.assertTrue(idle.reset)
        self.assertNoResult(drained)
        sending.send(b"second half")
        sending.half_close()
        self.assertEqual(bytes(sending.peer.data), b"first half second half")
        d.callback(b"done")
        busy.connection.flush()
        self.assertEqual(bytes(busy.peer.data), b"done")
        self.assertFalse(busy.reset)
        self.successResultOf(drained)
        m = factory.metrics
        self.assertEqual((m.requests, m.answers, m.abandoned), (3, 2, 1))

    def test_a_request_read_within_the_first_read_grace_is_answered(self) -> None:
        factory = self.factory()
        late = Wire(factory)
        drained = factory.drain()
        late.send(b"just in time")  # accepted before the drain, read after it
        late.half_close()
        self.clock.advance(FIRST_READ_GRACE)
        late.connection.flush()
        self.assertEqual(bytes(late.peer.data), b"just in time")
        self.assertFalse(late.reset)
        self.successResultOf(drained)

    def test_abort(self) -> None:
        factory = self.factory(lambda r: Deferred())
        wire = self.ask(factory, b"x")
        drained = factory.drain()
        self.assertEqual(factory.abort(), 1)
        wire.connection.flush()
        self.assertTrue(wire.reset)
        self.successResultOf(drained)
        self.assertEqual(factory.metrics.abandoned, 1)

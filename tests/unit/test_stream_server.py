"""What the stream factories give their protocols: peer, shared timers, connection events."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core import INT16, INT32
from sockproto.frame.server import FrameServerFactory, FrameServerProtocol
from sockproto.halfclose.server import HalfCloseServerFactory, HalfCloseServerProtocol
from sockproto.handlers import echo
from sockproto.request import Request
from sockproto.serving.timers import Timer
from sockproto.testing import HalfCloseTransport

CLIENT = IPv4Address("TCP", "10.0.0.7", 40000)


class HalfCloseCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.patch(HalfCloseServerProtocol, "_log", Logger(observer=self.events.append))
        self.requests: list[Request] = []

    def handler(self, request: Request) -> bytes:
        self.requests.append(request)
        return request.payload

    def factory(self, **kw: Any) -> HalfCloseServerFactory:
        return HalfCloseServerFactory(self.handler, clock=self.clock, **kw)

    def connect(self, factory: HalfCloseServerFactory, addr: Any = CLIENT) -> HalfCloseTransport:
        return HalfCloseTransport(CLIENT).connect(factory.buildProtocol(addr))


class PeerTests(HalfCloseCase):
    def test_the_address_given_to_build_protocol_is_the_peer(self) -> None:
        """Twisted passes the peer to buildProtocol: it is used, not built again by getPeer()."""
        factory = self.factory()
        given = IPv4Address("TCP", "192.0.2.1", 1234)
        t = self.connect(factory, given)
        t.peer_half_close()
        self.assertIs(self.requests[0].peer, given)

    def test_an_ipv4_mapped_address_given_is_plain_ipv4(self) -> None:
        t = self.connect(self.factory(), IPv6Address("TCP", "::ffff:192.0.2.1", 1234))
        t.peer_half_close()
        self.assertEqual(self.requests[0].peer, IPv4Address("TCP", "192.0.2.1", 1234))

    def test_without_an_address_the_transport_is_asked(self) -> None:
        t = self.connect(self.factory(), None)
        t.peer_half_close()
        self.assertEqual(self.requests[0].peer, CLIENT)


class SharedTimerTests(HalfCloseCase):
    def test_every_request_timeout_on_one_reactor_call(self) -> None:
        factory = self.factory(request_timeout=100)
        transports = []
        for _ in range(50):
            transports.append(self.connect(factory))
            self.clock.advance(1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(len(factory.timers), 50)
        self.clock.advance(50)  # 100 s after the first connection, 99 s after the second
        aborted = [t.aborted for t in transports]
        self.assertEqual(aborted, [True] * 1 + [False] * 49)

    def test_each_timeout_is_exact(self) -> None:
        factory = self.factory(request_timeout=3)
        first = self.connect(factory)
        self.clock.advance(1)
        second = self.connect(factory)
        self.clock.advance(2 - 0.001)
        self.assertFalse(first.aborted)
        self.clock.advance(0.001)
        self.assertTrue(first.aborted)
        self.assertFalse(second.aborted)
        self.clock.advance(1)
        self.assertTrue(second.aborted)

    def test_the_protocol_is_a_timeout_mixin_served_by_the_queue(self) -> None:
        factory = self.factory(request_timeout=5)
        t = self.connect(factory)
        proto: Any = t.protocol
        self.assertIsNone(proto.timeOut)  # not yet: most requests are done before the sweep
        self.assertEqual(len(factory.sweep), 1)
        self.clock.advance(factory.sweep.interval)
        self.assertEqual(proto.timeOut, 4)  # TimeoutMixin's, with the time left
        self.assertIsInstance(proto._TimeoutMixin__timeoutCall, Timer)
        proto.setTimeout(2)  # TimeoutMixin's own API still works: now 2 s from now
        self.clock.advance(2)
        self.assertTrue(t.aborted)

    def test_a_request_done_before_the_sweep_costs_no_timer(self) -> None:
        factory = self.factory(request_timeout=5)
        t = self.connect(factory)
        t.peer_half_close()
        self.assertIsNone(t.protocol.timeOut)  # type: ignore[union-attr]
        self.assertEqual(len(factory.sweep), 0)
        self.assertEqual(len(factory.timers), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answered_connections_leave_no_timer(self) -> None:
        factory = self.factory(request_timeout=5)
        for _ in range(20):
            t = self.connect(factory)
            t.protocol.dataReceived(b"x")  # type: ignore[union-attr]
            t.peer_half_close()
            t.lose()
        self.assertEqual(len(factory.timers), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_listening_factory_keeps_its_reactor_call_between_connections(self) -> None:
        factory = self.factory(request_timeout=5)
        factory.doStart()
        t = self.connect(factory)
        t.peer_half_close()
        [call] = self.clock.getDelayedCalls()  # kept: the next connection will reuse it
        self.connect(factory).peer_half_close()
        self.assertEqual(self.clock.getDelayedCalls(), [call])
        factory.doStop()  # not listening any more, and nothing pending: let it go
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_stopped_factory_still_times_out_its_connections(self) -> None:
        factory = self.factory(request_timeout=5)
        factory.doStart()
        t = self.connect(factory)
        factory.doStop()
        self.clock.advance(5)
        self.assertTrue(t.aborted)
        t.lose()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_clock_set_after_construction_is_used(self) -> None:
        factory = HalfCloseServerFactory(echo, request_timeout=5)
        factory.clock = self.clock  # what sockproto.testing does
        t = self.connect(factory)
        self.assertIs(factory.timers.clock, self.clock)
        self.assertIs(factory.limiter.clock, self.clock)
        self.clock.advance(5)
        self.assertTrue(t.aborted)


class ConnectionEventTests(HalfCloseCase):
    def test_open_and_close_logged_by_default(self) -> None:
        factory = self.factory()
        self.assertIsNone(factory.log_connections)  # as Twisted's noisy, True by default
        t = self.connect(factory)
        t.peer_half_close()
        t.lose()
        self.assertEqual([e["sockproto_event"] for e in self.events], ["connection_open", "connection_close"])
        self.assertEqual([e["peer"] for e in self.events], [CLIENT, CLIENT])
        self.assertEqual(self.events[1]["reason"], "Connection was closed cleanly.")

    def test_log_connections_false_costs_no_rate_limit_check(self) -> None:
        factory = self.factory(log_connections=False)
        for _ in range(3):
            t = self.connect(factory)
            t.peer_half_close()
            t.lose()
        self.assertEqual(self.events, [])
        self.assertEqual(factory.limiter._windows, {})  # not even counted
        self.assertEqual(factory.metrics.connections_total, 3)

    def test_a_quiet_factory_logs_no_connection(self) -> None:
        factory = self.factory()
        factory.noisy = False
        self.connect(factory).lose()
        self.assertEqual(self.events, [])
        self.assertEqual(factory.limiter._windows, {})

    def test_log_connections_true_overrides_quiet(self) -> None:
        factory = self.factory(log_connections=True)
        factory.noisy = False
        self.connect(factory).lose()
        self.assertEqual([e["sockproto_event"] for e in self.events], ["connection_open", "connection_close"])

    def test_other_events_are_still_logged(self) -> None:
        factory = self.factory(log_connections=False, max_request=1)
        t = self.connect(factory)
        t.protocol.dataReceived(b"too much")  # type: ignore[union-attr]
        self.assertEqual([e["sockproto_event"] for e in self.events], ["request_too_large"])

    def test_the_attribute_applies_to_protocols_built_afterwards(self) -> None:
        factory = self.factory()
        factory.log_connections = False
        self.connect(factory)
        self.assertEqual(self.events, [])

    def test_frame_factory_too(self) -> None:
        events: list[dict[str, Any]] = []
        self.patch(FrameServerProtocol, "_log", Logger(observer=events.append))
        factory = FrameServerFactory(echo, header=INT32, clock=self.clock, idle_timeout=5)
        factory.log_connections = False
        t = HalfCloseTransport(CLIENT).connect(factory.buildProtocol(CLIENT))
        t.protocol.dataReceived(INT32.pack_header(2) + b"hi")  # type: ignore[union-attr]
        self.assertEqual(t.value(), INT32.pack_header(2) + b"hi")
        self.assertEqual(events, [])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # its idle timeout, on the queue
        self.assertEqual(len(factory.timers), 1)
        self.clock.advance(5)
        self.assertTrue(t.disconnecting)


class SharedSettingsTests(SynchronousTestCase):
    """A frame factory's connections share one settings object by reference."""

    def test_protocols_share_one_settings_object(self) -> None:
        factory = FrameServerFactory(echo, header=INT32, max_in_flight=7)
        first, second = factory.buildProtocol(CLIENT), factory.buildProtocol(CLIENT)
        assert isinstance(first, FrameServerProtocol) and isinstance(second, FrameServerProtocol)
        self.assertIs(type(first), FrameServerProtocol)  # no class made at run time
        self.assertIs(first.settings, factory.settings)
        self.assertIs(second.settings, factory.settings)
        # nothing copied per connection: the instance holds the settings and its peer only
        self.assertEqual(set(vars(first)), {"settings", "peer"})
        # read through an instance, a handler function stays itself, not a bound method
        self.assertIs(first.handler, echo)
        self.assertEqual((first.header, first.max_in_flight, first.factory), (INT32, 7, factory))
        self.assertIs(first.settings.tracker, factory.tracker)

    def test_a_changed_setting_reaches_protocols_built_afterwards(self) -> None:
        factory = FrameServerFactory(echo, header=INT32)
        before = factory.buildProtocol(CLIENT)

        def upper(request: Request) -> bytes:
            return request.payload.upper()

        factory.handler = upper
        factory.max_in_flight = 2
        after = factory.buildProtocol(CLIENT)
        assert isinstance(before, FrameServerProtocol) and isinstance(after, FrameServerProtocol)
        self.assertIs(before.handler, echo)  # an open connection keeps what it started with
        self.assertEqual(before.max_in_flight, 64)
        self.assertIs(after.handler, upper)
        self.assertEqual(after.max_in_flight, 2)
        self.assertIs(after.settings, factory.settings)

    def test_a_changed_setting_is_validated_and_clamped(self) -> None:
        factory = FrameServerFactory(echo, header=INT32)
        with self.assertRaises(ValueError):
            factory.max_in_flight = 0
        factory.header = INT16
        factory.max_payload = 10**9
        self.assertEqual(factory.max_payload, INT16.max_payload)

    def test_a_protocol_built_directly_has_its_own_settings(self) -> None:
        proto = FrameServerProtocol(echo, header=INT32, max_in_flight=3)
        self.assertIs(type(proto), FrameServerProtocol)
        self.assertEqual((proto.settings.handler, proto.settings.max_in_flight), (echo, 3))
        self.assertIsNone(proto.factory)
        self.assertEqual(proto.metrics.service, "frame")

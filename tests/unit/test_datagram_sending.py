"""How the datagram server sends replies (straight to a Twisted port's socket) and counts them."""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet import udp
from twisted.internet.defer import Deferred
from twisted.internet.error import MessageLengthError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core.datagram import DropReason, encode_datagram
from sockproto.core.spf1 import Kind
from sockproto.datagram.server import DatagramServerFactory, DatagramServerProtocol
from sockproto.datagram.stats import DatagramStats
from sockproto.handlers import echo

from .datagram_fakes import FakeUDPTransport

PEER = ("127.0.0.1", 40000)
V6_PEER = ("::ffff:127.0.0.1", 40000)


class ScriptedSocket:
    """Stands for a UDP port's socket: records ``sendto``, or raises the errors it is given."""

    def __init__(self, connected: bool = False) -> None:
        self.sent: list[tuple[bytes, Any]] = []
        self.errors: list[OSError] = []
        self.connected = connected

    def sendto(self, datagram: bytes, addr: Any) -> int:
        if self.errors:
            raise self.errors.pop(0)
        self.sent.append((datagram, addr))
        return len(datagram)

    def getpeername(self) -> Any:
        if not self.connected:
            raise OSError(errno.ENOTCONN, "not connected")
        return PEER


class PortWrite(Exception):
    """Raised by the port's ``write``, which the replies must not go through."""


class Case(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.patch(DatagramServerProtocol, "_log", Logger(observer=self.events.append))

    def on_port(self, handler: Any = echo, *, connected: bool = False, **kw: Any) -> DatagramServerProtocol:
        """A protocol started on a real (unbound) Twisted UDP port whose socket is scripted."""
        self.factory = DatagramServerFactory(handler, clock=Clock(), **kw)
        proto = self.factory.buildProtocol(None)
        port = udp.Port(0, proto, "127.0.0.1", reactor=MemoryReactor())
        self.socket = ScriptedSocket(connected)
        port.socket = self.socket

        def write(datagram: bytes, addr: Any = None) -> None:
            raise PortWrite()

        port.write = write  # type: ignore[method-assign]
        proto.makeConnection(port)
        self.refused: list[None] = []
        proto.connectionRefused = lambda: self.refused.append(None)  # type: ignore[method-assign]
        return proto

    def send_failures(self) -> list[Any]:
        return [e["error"] for e in self.events if e.get("sockproto_event") == "send_failed"]


class DirectSendTests(Case):
    def test_replies_go_to_the_socket_not_through_port_write(self) -> None:
        for mode, sent in (("raw", b"hi"), ("spf1", encode_datagram(Kind.RESPONSE, 4, b"hi"))):
            proto = self.on_port(mode=mode)
            payload = b"hi" if mode == "raw" else encode_datagram(Kind.REQUEST, 4, b"hi")
            proto.datagramReceived(payload, PEER)
            proto.datagramReceived(payload, V6_PEER)  # an address as a dual-stack socket gives it
            self.assertEqual(self.socket.sent, [(sent, PEER), (sent, V6_PEER)], mode)

    def test_general_path_replies_go_to_the_socket_too(self) -> None:
        d: Deferred[bytes] = Deferred()
        proto = self.on_port(lambda request: d)
        proto.datagramReceived(encode_datagram(Kind.PING, 1, b"p"), PEER)
        proto.datagramReceived(encode_datagram(Kind.REQUEST, 2, b"q"), PEER)
        d.callback(b"later")
        proto.datagramReceived(encode_datagram(Kind.REQUEST, 2, b"q"), PEER)  # from the cache
        self.assertEqual(
            [datagram for datagram, _ in self.socket.sent],
            [encode_datagram(Kind.PONG, 1, b"p")] + [encode_datagram(Kind.RESPONSE, 2, b"later")] * 2,
        )
        self.assertEqual(self.factory.stats.replied, 3)

    def test_an_interrupted_send_is_retried(self) -> None:
        proto = self.on_port(mode="raw")
        self.socket.errors = [OSError(errno.EINTR, "interrupted"), OSError(errno.EINTR, "interrupted")]
        proto.datagramReceived(b"q", PEER)
        self.assertEqual(self.socket.sent, [(b"q", PEER)])
        stats = self.factory.stats
        self.assertEqual((stats.received, stats.answers, stats.replied, stats.dropped), (1, 1, 1, 0))
        self.assertEqual(self.send_failures(), [])

    def test_full_buffers_and_oversized_datagrams_drop_the_reply(self) -> None:
        proto = self.on_port(mode="raw")
        self.socket.errors = [
            BlockingIOError(errno.EWOULDBLOCK, "would block"),
            OSError(errno.ENOBUFS, "no buffer space"),
            OSError(errno.EMSGSIZE, "message too long"),
        ]
        for _ in range(3):
            proto.datagramReceived(b"q", PEER)
        stats = self.factory.stats
        self.assertEqual((stats.received, stats.answers, stats.replied), (3, 3, 0))
        self.assertEqual(stats.drops[DropReason.SEND_FAILED], 3)
        errors = self.send_failures()
        self.assertEqual([type(e) for e in errors], [BlockingIOError, OSError, MessageLengthError])
        self.assertEqual((self.socket.sent, self.refused), ([], []))

    def test_refused_calls_connection_refused_only_when_connected(self) -> None:
        for connected in (False, True):
            proto = self.on_port(mode="raw", connected=connected)
            self.socket.errors = [ConnectionRefusedError(errno.ECONNREFUSED, "refused")]
            proto.datagramReceived(b"q", PEER)
            self.assertEqual(self.factory.stats.drops[DropReason.SEND_FAILED], 1)
            self.assertEqual(len(self.refused), int(connected))

    def test_after_stop_replies_are_counted_as_failed(self) -> None:
        proto = self.on_port(mode="raw")
        proto.stopProtocol()
        proto.datagramReceived(b"q", PEER)  # a late call: the protocol has no socket any more
        self.assertEqual(self.socket.sent, [])
        stats = self.factory.stats
        self.assertEqual((stats.answers, stats.replied, stats.drops[DropReason.SEND_FAILED]), (1, 0, 1))

    def test_other_transports_get_write(self) -> None:
        factory = DatagramServerFactory(echo, mode="raw", clock=Clock())
        transport = FakeUDPTransport().attach(factory.buildProtocol(None))
        transport.protocol.datagramReceived(b"q", PEER)  # type: ignore[union-attr]
        self.assertEqual(transport.written, [(b"q", PEER)])


class CountingTests(Case):
    def test_an_answer_sent_at_once_counts_once_in_served(self) -> None:
        proto = self.on_port(mode="raw")
        proto.datagramReceived(b"hello", PEER)
        stats = self.factory.stats
        self.assertEqual(stats.served, 1)
        counts = stats.as_dict()
        self.assertEqual(
            {name: counts[name] for name in ("received", "requests", "answers", "replied", "handled")},
            dict.fromkeys(("received", "requests", "answers", "replied", "handled"), 1),
        )
        self.assertEqual((counts["bytes_in"], counts["bytes_out"]), (5, 5))

    def test_other_outcomes_are_counted_apart(self) -> None:
        def fail_on_x(request: Any) -> Any:
            if request.payload == b"x":
                raise ValueError("x")
            return Deferred() if request.payload == b"later" else request.payload

        proto = self.on_port(fail_on_x, mode="raw", rate_limit=3, trusted=())  # loopback limited too
        for payload in (b"ok", b"x", b"later", b"over the rate"):
            proto.datagramReceived(payload, PEER)
        stats = self.factory.stats
        self.assertEqual((stats.served, stats.received, stats.requests, stats.answers), (1, 4, 3, 1))
        self.assertEqual((stats.in_flight, stats.drops[DropReason.RATE_LIMITED]), (1, 1))
        self.assertEqual(stats.drops[DropReason.HANDLER_FAILED], 1)
        self.assertEqual(stats.bytes_in, sum(map(len, (b"ok", b"x", b"later", b"over the rate"))))

    def test_derived_counters_behave_as_plain_ones(self) -> None:
        stats = DatagramStats()
        stats.served = 5
        stats.requests += 1
        stats.answers = 2
        stats.received = 9
        self.assertEqual((stats.requests, stats.answers, stats.received, stats.replied), (6, 2, 9, 5))
        stats.served += 1
        self.assertEqual((stats.requests, stats.answers, stats.received, stats.replied), (7, 3, 10, 6))

    def test_a_handler_failure_is_not_sent(self) -> None:
        proto = self.on_port(lambda request: Failure(ValueError("not bytes")), mode="raw")
        proto.datagramReceived(b"q", PEER)
        self.assertEqual(self.socket.sent, [])
        self.assertEqual(self.factory.stats.drops[DropReason.HANDLER_FAILED], 1)

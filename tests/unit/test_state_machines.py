"""Hypothesis state machines over the protocols, with in-memory transports.

Each machine drives a real protocol through random interleavings of good and bad
input, handler completions and flow-control events, checking the services' rules as
invariants after every step (see each machine's module).  They run under trial and
pytest alike: each is run by a ``SynchronousTestCase`` method.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test
from twisted.internet.protocol import Protocol
from twisted.logger import LogEvent, Logger
from twisted.trial.unittest import SynchronousTestCase

from sockproto import DatagramServerProtocol, FrameServerProtocol
from sockproto.core import ErrorCode, Kind, decode_error, encode_error
from sockproto.frame.server import FrameServerFactory
from sockproto.handlers import echo
from sockproto.request import Request
from sockproto.testing import (
    build_request,
    connect_protocols,
    frame_exchange,
    parse_error,
    parse_frames,
    serve_datagrams,
)

from .machines_common import Boom, Peer
from .machines_datagram import DatagramServerMachine
from .machines_datagram_rules import DatagramRulesMachine
from .machines_frame import FrameConnectionMachine, FrameServerMachine
from .machines_frame_client import FrameClientMachine
from .machines_frame_stream import FrameStreamMachine
from .machines_halfclose import HalfCloseServerMachine

STEPS = settings(stateful_step_count=50, deadline=None)


class FrameMachineTests(SynchronousTestCase):
    def test_server(self) -> None:
        run_state_machine_as_test(FrameServerMachine, settings=STEPS)
        self.flushLoggedErrors(Boom)

    def test_connection(self) -> None:
        run_state_machine_as_test(FrameConnectionMachine, settings=STEPS)

    def test_client(self) -> None:
        run_state_machine_as_test(FrameClientMachine, settings=STEPS)

    def test_streaming_connection(self) -> None:
        # more examples than the others: its rules interleave in more ways (sized answers,
        # early answers, cuts), and an example takes ~10 ms
        run_state_machine_as_test(
            FrameStreamMachine, settings=settings(stateful_step_count=60, max_examples=500, deadline=None)
        )


class HalfCloseMachineTests(SynchronousTestCase):
    def test_server(self) -> None:
        run_state_machine_as_test(HalfCloseServerMachine, settings=STEPS)
        self.flushLoggedErrors(Boom)


class DatagramMachineTests(SynchronousTestCase):
    def test_server(self) -> None:
        run_state_machine_as_test(DatagramServerMachine, settings=STEPS)
        self.flushLoggedErrors(Boom)

    def test_rules(self) -> None:
        run_state_machine_as_test(DatagramRulesMachine, settings=STEPS)


def fail_with_the_payload(request: Request) -> bytes:
    """A handler whose error message quotes undecodable input, as ``surrogateescape`` gives it."""
    if request.payload.startswith(b"\xff"):
        raise Boom(f"cannot parse {request.payload.decode('utf-8', 'surrogateescape')!s}")
    return request.payload


class AbortsOnFirstRead(Protocol):
    def __init__(self) -> None:
        self.reads: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.reads.append(data)
        self.transport.abortConnection()  # type: ignore[union-attr]


class FoundWhileWritingTheMachinesTests(SynchronousTestCase):
    """Minimal reproductions of what the machines and fuzz targets ran into (reported)."""

    def keep_log(self, protocol: type) -> list[LogEvent]:
        """Collect ``protocol``'s log events here, away from trial's ``test.log``.

        Trial's log file is strict UTF-8: the lone surrogates these tests put in a
        handler's exception would make it fail, whatever the service does.
        """
        logged: list[LogEvent] = []
        self.patch(protocol, "_log", Logger(observer=logged.append))
        return logged

    def test_frame_error_4_for_a_message_with_a_lone_surrogate(self) -> None:
        """A handler exception gets ERROR 4 and the connection goes on (issue 2), whatever its message."""
        logged = self.keep_log(FrameServerProtocol)
        data = build_request(b"\xff\xfe", id=5) + build_request(b"next", id=6)
        answers = frame_exchange(fail_with_the_payload, data)
        self.assertEqual([(a.kind, a.id) for a in answers], [(Kind.ERROR, 5), (Kind.RESPONSE, 6)])
        self.assertEqual(parse_error(answers[0].payload)[0], ErrorCode.HANDLER_FAILED)
        self.assertTrue(any(e.get("log_failure") and e["log_failure"].check(Boom) for e in logged))

    def test_datagram_error_4_for_a_message_with_a_lone_surrogate(self) -> None:
        """A handler exception gets ERROR 4 (issue 3), whatever its message."""
        logged = self.keep_log(DatagramServerProtocol)
        port = serve_datagrams(fail_with_the_payload)
        [(reply, _)] = port.receive(build_request(b"\xff\xfe", id=5))
        [answer] = parse_frames(reply)
        self.assertEqual((answer.kind, answer.id), (Kind.ERROR, 5))
        self.assertEqual(parse_error(answer.payload)[0], ErrorCode.HANDLER_FAILED)
        self.assertTrue(any(e.get("log_failure") and e["log_failure"].check(Boom) for e in logged))

    def test_encode_error_takes_any_message(self) -> None:
        """``encode_error(code, message: str)`` is public: any str, as the services now allow."""
        code, message = decode_error(encode_error(ErrorCode.HANDLER_FAILED, "bad \udcff input"))
        self.assertEqual(code, ErrorCode.HANDLER_FAILED)
        self.assertTrue(message.startswith("bad "))

    def test_frame_answers_a_request_followed_by_a_half_close(self) -> None:
        """``nc -N`` and the talk's clients send, then ``shutdown(SHUT_WR)``, then read.

        Unless the protocol is half-closeable, Twisted ends the whole connection at the
        client's FIN and drops the answers still due (seen over loopback TCP before it
        was: 0 answers in 50 tries).
        """
        server = FrameServerFactory(echo).buildProtocol(None)
        peer = Peer()
        connection = connect_protocols(server, peer)
        connection.client_transport.write(build_request(b"hello", id=7))
        connection.client_transport.loseWriteConnection()
        connection.flush()
        self.assertEqual(parse_frames(bytes(peer.data)), [(Kind.RESPONSE, 7, b"hello")])

    def test_memory_connection_delivers_nothing_after_abort(self) -> None:
        """Twisted never calls ``dataReceived`` after ``abortConnection`` (TCP and TLS alike)."""
        server = AbortsOnFirstRead()
        connection = connect_protocols(server, Protocol(), chunk_size=1)
        connection.client_transport.write(b"abc")
        connection.flush()
        self.assertEqual(server.reads, [b"a"])

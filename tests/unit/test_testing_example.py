"""Example: testing your own handler with sockproto.testing, the way a user would, under trial.

The handler below is "user code": a small key-value store speaking ``SET key value`` and
``GET key``, whose lookups go through an asynchronous backend.  The tests run it through
sockproto's real protocols (framing, ids, errors, half-close, datagrams) with no socket
and no reactor: ``twisted.trial.unittest.SynchronousTestCase`` and a ``Clock``.

Run it with ``python -m twisted.trial tests.unit.test_testing_example`` (or pytest).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase

from sockproto import ErrorCode, Kind, RemoteError, Request
from sockproto.halfclose.client import ServerReset
from sockproto.testing import (
    build_request,
    frame_pair,
    halfclose_pair,
    parse_error,
    parse_frames,
    serve_datagrams,
)


class KeyValueHandler:
    """User code: ``SET key value`` stores, ``GET key`` answers after a backend delay."""

    def __init__(self, clock: Clock, delay: float = 0.5) -> None:
        self.clock = clock
        self.delay = delay
        self.data: dict[bytes, bytes] = {}

    def __call__(self, request: Request) -> bytes | Deferred[bytes]:
        command, _, rest = request.payload.partition(b" ")
        if command == b"SET":
            key, _, value = rest.partition(b" ")
            self.data[key] = value
            return b"OK"
        if command == b"GET":
            return deferLater(self.clock, self.delay, self._lookup, rest)
        raise ValueError(f"unknown command {command!r}")

    def _lookup(self, key: bytes) -> bytes:
        try:
            return self.data[key]
        except KeyError:
            raise KeyError(key.decode()) from None


class KeyValueOverFramesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.handler = KeyValueHandler(self.clock)
        self.pair = frame_pair(self.handler)

    def test_set_then_get(self) -> None:
        self.assertEqual(self.successResultOf(self.pair.request(b"SET colour blue")), b"OK")
        answer = self.pair.request(b"GET colour")
        self.assertNoResult(answer)  # the backend has not answered yet
        self.clock.advance(0.5)
        self.pair.flush()
        self.assertEqual(self.successResultOf(answer), b"blue")

    def test_answers_come_as_lookups_finish(self) -> None:
        self.handler.data.update({b"a": b"1", b"b": b"2"})
        slow = self.pair.request(b"GET a")
        self.handler.delay = 0.1
        fast = self.pair.request(b"GET b")
        self.clock.advance(0.1)
        self.pair.flush()
        self.assertEqual(self.successResultOf(fast), b"2")
        self.assertNoResult(slow)
        self.clock.advance(0.4)
        self.pair.flush()
        self.assertEqual(self.successResultOf(slow), b"1")

    def test_missing_key_is_error_4_and_the_connection_goes_on(self) -> None:
        answer = self.pair.request(b"GET nothing")
        self.clock.advance(0.5)
        self.pair.flush()
        error = self.failureResultOf(answer, RemoteError).value
        self.assertEqual(error.code, ErrorCode.HANDLER_FAILED)
        self.assertIn("KeyError", error.message)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)  # the traceback went to the log
        self.assertEqual(self.successResultOf(self.pair.request(b"SET k v")), b"OK")

    def test_unknown_command(self) -> None:
        self.failureResultOf(self.pair.request(b"DROP TABLE"), RemoteError)
        self.flushLoggedErrors(ValueError)


class KeyValueOverHalfCloseTests(SynchronousTestCase):
    def test_set_get_and_failure_is_a_reset(self) -> None:
        clock = Clock()
        pair = halfclose_pair(KeyValueHandler(clock, delay=0))
        self.assertEqual(self.successResultOf(pair.request(b"SET x 42")), b"OK")
        answer = pair.request(b"GET x")
        clock.advance(0)
        pair.flush()
        self.assertEqual(self.successResultOf(answer), b"42")
        failed = pair.request(b"BOGUS")
        self.failureResultOf(failed, ServerReset)  # never an empty answer
        self.flushLoggedErrors(ValueError)


class KeyValueOverDatagramsTests(SynchronousTestCase):
    def test_reply_to_sender_and_retransmission_answered_once(self) -> None:
        clock = Clock()
        handler = KeyValueHandler(clock)
        port = serve_datagrams(handler, clock=clock)
        sender = ("192.0.2.7", 40123)
        [(reply, addr)] = port.receive(build_request(b"SET n 1", id=9), sender)
        self.assertEqual((parse_frames(reply), addr), ([(Kind.RESPONSE, 9, b"OK")], sender))
        # A retransmitted SET (same id) is answered from the reply cache, not run again.
        handler.data.clear()
        self.assertEqual(port.receive(build_request(b"SET n 1", id=9), sender), [(reply, sender)])
        self.assertEqual(handler.data, {})

    def test_error_reply(self) -> None:
        port = serve_datagrams(KeyValueHandler(Clock()))
        [(reply, _)] = port.receive(build_request(b"NOPE", id=1))
        ((kind, ident, payload),) = parse_frames(reply)
        self.assertEqual((kind, ident, parse_error(payload)[0]), (Kind.ERROR, 1, ErrorCode.HANDLER_FAILED))
        self.flushLoggedErrors(ValueError)

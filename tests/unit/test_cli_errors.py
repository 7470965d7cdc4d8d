"""sockproto.cli.errors: every failure becomes an exit status and one line."""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.error import (
    ConnectingCancelledError,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    DNSLookupError,
    TimeoutError,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from sockproto.cli.commands import Streams
from sockproto.cli.errors import CommandError, Status, describe
from sockproto.core import ErrorCode
from sockproto.datagram.client import PortUnreachable
from sockproto.frame.client import FrameProtocolError, RemoteError, RequestTimeout
from sockproto.halfclose.client import AnswerTimeout, ServerReset


class DescribeTests(SynchronousTestCase):
    def check(self, error: BaseException, status: Status, *fragments: str) -> None:
        for given in (error, Failure(error)):
            result = describe(given, "127.0.0.1:8750")
            self.assertEqual(result.status, status, result.message)
            for fragment in fragments:
                self.assertIn(fragment, result.message)
            self.assertNotIn("\n", result.message)

    def test_server_error(self) -> None:
        self.check(
            RemoteError(ErrorCode.TOO_LARGE, "payload of 9 bytes\nis over"),
            Status.SERVER_ERROR,
            "server error 2 (TOO_LARGE): payload of 9 bytes is over",
        )
        self.check(RemoteError(77, "new"), Status.SERVER_ERROR, "server error 77 (UNKNOWN): new")

    def test_could_not_connect(self) -> None:
        for error in (
            ConnectionRefusedError(),
            DNSLookupError("no such host"),
            TimeoutError(),
            PortUnreachable(),
            ConnectingCancelledError(None),
        ):
            self.check(error, Status.NO_ANSWER, "could not connect to 127.0.0.1:8750")

    def test_timeouts(self) -> None:
        self.check(
            RequestTimeout("no answer within 1 s"), Status.NO_ANSWER, "timed out: no answer within 1 s"
        )
        self.check(AnswerTimeout("no complete answer"), Status.NO_ANSWER, "timed out")
        self.check(CancelledError(), Status.NO_ANSWER, "127.0.0.1:8750: timed out")

    def test_lost_connections(self) -> None:
        self.check(ConnectionDone(), Status.NO_ANSWER, "closed before the answer")
        self.check(
            ConnectionLost("Connection reset by peer"), Status.NO_ANSWER, "reset?", "Connection reset by peer"
        )
        self.check(ServerReset("the server reset the connection"), Status.NO_ANSWER, "ServerReset", "reset")
        self.check(FrameProtocolError("bad magic"), Status.NO_ANSWER, "FrameProtocolError: bad magic")

    def test_command_error_passes_through(self) -> None:
        error = CommandError(Status.USAGE, "as is")
        self.assertIs(describe(error, "x"), error)


class StreamsTests(SynchronousTestCase):
    def test_answers_are_written_and_flushed(self) -> None:
        out = io.BytesIO()
        Streams(out, io.StringIO()).answer(b"\x00answer")
        self.assertEqual(out.getvalue(), b"\x00answer")

    def test_closed_stdout_is_output_closed_without_message(self) -> None:
        class Closed(io.BytesIO):
            def write(self, data: Any) -> int:
                raise BrokenPipeError(32, "Broken pipe")

        with self.assertRaises(CommandError) as info:
            Streams(Closed(), io.StringIO()).answer(b"x")
        self.assertEqual((info.exception.status, info.exception.message), (Status.OUTPUT_CLOSED, ""))
        self.assertEqual(int(Status.OUTPUT_CLOSED), 141)

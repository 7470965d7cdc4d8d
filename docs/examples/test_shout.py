"""Testing the ``shout`` handler with sockproto.testing, under trial: no socket, no reactor.

$ python -m twisted.trial test_shout      # from this directory
"""

from __future__ import annotations

from shout_server import shout
from twisted.trial.unittest import SynchronousTestCase

from sockproto import ErrorCode, Kind, RemoteError, ServerReset
from sockproto.testing import build_request, frame_pair, halfclose_pair, parse_frames, serve_datagrams


class ShoutOverFramesTests(SynchronousTestCase):
    def test_shouts(self):
        pair = frame_pair(shout)  # the real server and client protocols, in memory
        self.assertEqual(self.successResultOf(pair.request(b"hello")), b"HELLO!")

    def test_empty_request_is_refused_with_error_4(self):
        pair = frame_pair(shout)
        error = self.failureResultOf(pair.request(b""), RemoteError).value
        self.assertEqual(error.code, ErrorCode.HANDLER_FAILED)
        self.assertIn("nothing to shout", error.message)
        self.flushLoggedErrors(ValueError)  # the traceback went to the log


class ShoutOverHalfCloseTests(SynchronousTestCase):
    def test_shouts_and_an_empty_request_is_a_reset(self):
        pair = halfclose_pair(shout)
        self.assertEqual(self.successResultOf(pair.request(b"hi")), b"HI!")
        self.failureResultOf(pair.request(b""), ServerReset)
        self.flushLoggedErrors(ValueError)


class ShoutOverDatagramsTests(SynchronousTestCase):
    def test_reply_goes_back_to_the_sender(self):
        port = serve_datagrams(shout)
        [(reply, address)] = port.receive(build_request(b"hey", id=3), ("127.0.0.1", 40000))
        self.assertEqual(address, ("127.0.0.1", 40000))
        self.assertEqual(parse_frames(reply), [(Kind.RESPONSE, 3, b"HEY!")])

"""sockproto.compat: Twisted's own IntN tests, run unchanged, then what they miss.

The test cases of :mod:`twisted.protocols.test.test_basic` take the protocol under
test from their ``protocol`` attribute: each subclass below points it at the drop-in
(mixed with Twisted's ``TestMixin``, which records strings as Twisted's
``TestInt32`` does) and inherits every test unchanged, once as shipped and once with
every string straddling reads on the long-string path (joined once, never to the
next read).  The module, not its classes, is imported, so no
runner collects Twisted's originals from here.  One inherited test,
``test_stringReceivedNotImplemented``, instantiates Twisted's base class itself:
``DropInTests`` has its counterpart for ours.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.protocols import basic
from twisted.protocols.test import test_basic
from twisted.trial.unittest import SynchronousTestCase

from sockproto import compat

from .compat_helpers import Recorder, connect, msg


class CompatInt32(test_basic.TestMixin, compat.Int32StringReceiver):  # type: ignore[misc]
    """The drop-in recording what it receives, like Twisted's ``TestInt32``."""


class CompatInt16(test_basic.TestMixin, compat.Int16StringReceiver):  # type: ignore[misc]
    """The drop-in recording what it receives, like Twisted's ``TestInt16``."""


class CompatInt8(test_basic.TestMixin, compat.Int8StringReceiver):  # type: ignore[misc]
    """The drop-in recording what it receives, like Twisted's ``TestInt8``."""


class TwistedInt32Tests(test_basic.Int32Tests):  # type: ignore[misc]
    """Twisted's ``Int32Tests`` (with IntNTestCaseMixin, RecvdAttributeMixin)."""

    protocol = CompatInt32


class TwistedInt16Tests(test_basic.Int16Tests):  # type: ignore[misc]
    """Twisted's ``Int16Tests`` (with IntNTestCaseMixin, RecvdAttributeMixin)."""

    protocol = CompatInt16


class TwistedInt8Tests(test_basic.Int8Tests):  # type: ignore[misc]
    """Twisted's ``Int8Tests`` (with IntNTestCaseMixin, RecvdAttributeMixin)."""

    protocol = CompatInt8


class DecoderInt32(CompatInt32):
    """Every string straddling reads takes the long-string path: none is joined to a read."""

    _join_limit = 0


class DecoderInt16(CompatInt16):
    _join_limit = 0


class DecoderInt8(CompatInt8):
    _join_limit = 0


class TwistedInt32DecoderTests(test_basic.Int32Tests):  # type: ignore[misc]
    """Twisted's ``Int32Tests`` again, every partial string on the long-string path."""

    protocol = DecoderInt32


class TwistedInt16DecoderTests(test_basic.Int16Tests):  # type: ignore[misc]
    protocol = DecoderInt16


class TwistedInt8DecoderTests(test_basic.Int8Tests):  # type: ignore[misc]
    protocol = DecoderInt8


class DropInTests(SynchronousTestCase):
    def test_not_twisted_class(self) -> None:
        """The drop-ins have their own receive loop, not Twisted's class."""
        for cls in (compat.Int32StringReceiver, compat.Int16StringReceiver, compat.Int8StringReceiver):
            self.assertFalse(issubclass(cls, basic.IntNStringReceiver))
        self.assertEqual(
            [
                (c.structFormat, c.prefixLength)
                for c in (compat.Int32StringReceiver, compat.Int8StringReceiver)
            ],
            [("!I", 4), ("!B", 1)],
        )

    def test_string_received_not_implemented(self) -> None:
        """Twisted's test of this targets its own base class; the same for ours."""
        self.assertRaises(NotImplementedError, compat.IntNStringReceiver().stringReceived, b"foo")

    def test_too_long_send_is_twisted_error(self) -> None:
        p = CompatInt16()
        connect(p)
        with self.assertRaises(basic.StringTooLongError) as caught:
            p.sendString(b"x" * 65536)
        self.assertEqual(str(caught.exception), "Try to send 65536 bytes whereas maximum is 65536")
        p.sendString(b"x" * 65535)
        self.assertEqual(p.transport.value(), b"\xff\xff" + b"x" * 65535)

    def test_default_length_limit_disconnects(self) -> None:
        p = CompatInt32()
        transport = connect(p)
        p.dataReceived(msg(b"ok") + struct.pack("!I", 51) + b"x" * 10)
        self.assertEqual(p.received, [b"ok"])
        self.assertTrue(transport.disconnecting)


class LargeMessageTests(SynchronousTestCase):
    def test_one_mib_in_64k_reads(self) -> None:
        payload = bytes(range(256)) * 4096
        stream = msg(payload) + msg(b"next")
        p = Recorder()
        connect(p)
        for i in range(0, len(stream), 65536):
            p.dataReceived(stream[i : i + 65536])
            if i + 65536 < len(payload):
                self.assertEqual(p.received, [])
        self.assertEqual(p.received, [payload, b"next"])
        self.assertEqual(p.recvd, b"")

    def test_recvd_while_a_large_message_is_held(self) -> None:
        stream = msg(b"a" * 200_000)
        p = Recorder()
        connect(p)
        p.dataReceived(stream[:70_000])
        p.dataReceived(stream[70_000:150_000])
        self.assertEqual(p.recvd, stream[:150_000])
        p.dataReceived(stream[150_000:])
        self.assertEqual(p.received, [b"a" * 200_000])

    def test_limit_applies_before_any_payload_is_held(self) -> None:
        p = Recorder()
        p.MAX_LENGTH = 1000
        connect(p)
        p.dataReceived(struct.pack("!I", 2**31)[:3])
        p.dataReceived(struct.pack("!I", 2**31)[3:] + b"x" * 100)
        self.assertEqual(p.refused, [2**31])
        self.assertEqual(p.recvd, struct.pack("!I", 2**31) + b"x" * 100)


class ChunkingTests(SynchronousTestCase):
    strings = (b"", b"a", b"bb" * 40, b"", b"c" * 300, b"d")

    def feed_in(self, size: int, cls: type[compat.IntNStringReceiver], fmt: str, join: int) -> list[bytes]:
        class P(test_basic.TestMixin, cls):  # type: ignore[misc,valid-type]
            MAX_LENGTH = 1000
            _join_limit = join

        p = P()
        connect(p)
        stream = b"".join(msg(s, fmt) for s in self.strings)
        for i in range(0, len(stream), size):
            p.dataReceived(stream[i : i + size])
        self.assertEqual(p.recvd, b"")
        received: list[bytes] = p.received
        return received

    def test_every_read_size(self) -> None:
        for cls, fmt in ((compat.Int32StringReceiver, "!I"), (compat.Int16StringReceiver, "!H")):
            for size in (1, 2, 3, 4, 5, 7, 64, 301, 1000):
                for join in (0, 100, 16 * 1024):
                    got = self.feed_in(size, cls, fmt, join)
                    self.assertEqual(got, list(self.strings), (fmt, size, join))

    def test_bytearray_and_memoryview_reads(self) -> None:
        p = Recorder()
        connect(p)
        p.dataReceived(bytearray(msg(b"ab")))
        p.dataReceived(memoryview(msg(b"cd")))
        self.assertEqual(p.received, [b"ab", b"cd"])
        self.assertIs(type(p.received[0]), bytes)


class PausingTests(SynchronousTestCase):
    def test_pause_mid_read_then_resume(self) -> None:
        p = Recorder(pause_after=frozenset({2}))
        transport = connect(p)
        five = [msg(bytes([65 + i]) * i) for i in range(5)]
        p.dataReceived(b"".join(five) + b"\x00\x00")
        self.assertEqual(p.received, [b"", b"B"])
        self.assertTrue(p.paused)
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(p.recvd, b"".join(five[2:]) + b"\x00\x00")
        p.dataReceived(b"\x00\x02zz")  # buffered, not delivered, while paused
        self.assertEqual(len(p.received), 2)
        self.assertEqual(p.recvd, b"".join(five[2:]) + b"\x00\x00\x00\x02zz")
        p.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(p.received, [b"", b"B", b"CC", b"DDD", b"EEEE", b"zz"])
        self.assertEqual(p.recvd, b"")

    def test_pause_while_a_string_is_held(self) -> None:
        p = Recorder(pause_after=frozenset({1}))
        connect(p)
        stream = msg(b"x" * 100_000) + msg(b"y")
        p.dataReceived(stream[:65536])
        p.dataReceived(stream[65536:])
        self.assertEqual(p.received, [b"x" * 100_000])
        self.assertEqual(p.recvd, msg(b"y"))
        p.resumeProducing()
        self.assertEqual(p.received, [b"x" * 100_000, b"y"])

    def test_paused_before_any_data(self) -> None:
        p = Recorder()
        connect(p)
        p.pauseProducing()
        p.dataReceived(msg(b"a") + msg(b"b"))
        self.assertEqual((p.received, p.recvd), ([], msg(b"a") + msg(b"b")))
        p.resumeProducing()
        self.assertEqual(p.received, [b"a", b"b"])

    def test_stop_producing(self) -> None:
        p = Recorder()
        transport = connect(p)
        p.stopProducing()
        p.dataReceived(msg(b"a"))
        self.assertEqual((p.received, transport.producerState), ([], "stopped"))

    def test_resume_from_the_callback(self) -> None:
        """Pausing and resuming inside stringReceived delivers each string once, in order."""
        p = Recorder()
        connect(p)

        def string_received(string: bytes) -> None:
            p.received.append(string)
            p.pauseProducing()
            p.resumeProducing()

        p.stringReceived = string_received  # type: ignore[method-assign]
        p.dataReceived(msg(b"a") + msg(b"b") + msg(b"c"))
        self.assertEqual(p.received, [b"a", b"b", b"c"])


def recorder_on_a(action: Any) -> Recorder:
    """A connected Recorder that records each string, then calls ``action(p)`` on ``a``."""
    p = Recorder()
    connect(p)

    def string_received(string: bytes) -> None:
        p.received.append(string)
        if string == b"a":
            action(p)

    p.stringReceived = string_received  # type: ignore[method-assign]
    return p


def boom(p: Recorder) -> None:
    raise RuntimeError("boom")


class ReentrancyTests(SynchronousTestCase):
    def test_data_received_from_the_callback_comes_after(self) -> None:
        p = recorder_on_a(lambda p: p.dataReceived(msg(b"nested")))
        p.dataReceived(msg(b"a") + msg(b"b"))
        self.assertEqual(p.received, [b"a", b"b", b"nested"])

    def test_data_received_from_the_callback_of_a_one_string_read(self) -> None:
        """A read that is exactly one string takes a shorter path, reentrancy included."""
        p = recorder_on_a(lambda p: p.dataReceived(msg(b"nested") + msg(b"x")[:3]))
        p.dataReceived(msg(b"0"))  # the first read sets the receiver up
        p.dataReceived(msg(b"a"))
        self.assertEqual(p.received, [b"0", b"a", b"nested"])
        self.assertEqual(p.recvd, msg(b"x")[:3])
        p.dataReceived(msg(b"x")[3:])
        self.assertEqual(p.received, [b"0", b"a", b"nested", b"x"])

    def test_an_exception_in_a_one_string_read(self) -> None:
        p = recorder_on_a(boom)
        p.dataReceived(msg(b"0"))  # the first read sets the receiver up
        self.assertRaises(RuntimeError, p.dataReceived, msg(b"a"))
        p.dataReceived(msg(b"b"))
        self.assertEqual(p.received, [b"0", b"a", b"b"])

    def test_an_exception_does_not_replay_strings(self) -> None:
        """Twisted's class would deliver ``a`` again; here parsing goes on after it."""
        p = recorder_on_a(boom)
        self.assertRaises(RuntimeError, p.dataReceived, msg(b"a") + msg(b"b"))
        p.dataReceived(msg(b"c"))
        self.assertEqual(p.received, [b"a", b"b", b"c"])

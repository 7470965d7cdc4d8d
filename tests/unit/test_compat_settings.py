"""sockproto.compat: MAX_LENGTH, structFormat and recvd changed at run time."""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from sockproto import compat
from sockproto.core.header import INT16, INT32

from .compat_helpers import Recorder, connect, msg


class SettingsTests(SynchronousTestCase):
    def test_max_length_lowered_by_a_callback(self) -> None:
        p = Recorder()
        connect(p)

        def string_received(string: bytes) -> None:
            p.received.append(string)
            p.MAX_LENGTH = 3

        p.stringReceived = string_received  # type: ignore[method-assign]
        p.dataReceived(msg(b"long one") + msg(b"abc") + msg(b"four") + msg(b"x"))
        self.assertEqual((p.received, p.refused), ([b"long one", b"abc"], [4]))
        self.assertEqual(p.recvd, msg(b"four") + msg(b"x"))

    def test_max_length_raised_by_a_callback_for_the_partial_last_string(self) -> None:
        for join_limit in (0, 16 * 1024):  # the partial string on the long-string path, or joined
            p = Recorder()
            p.MAX_LENGTH = 10
            p._join_limit = join_limit
            connect(p)

            def string_received(string: bytes, p: Recorder = p) -> None:
                p.received.append(string)
                p.MAX_LENGTH = 100

            p.stringReceived = string_received  # type: ignore[method-assign]
            stream = msg(b"short") + msg(b"w" * 50)
            p.dataReceived(stream[:20])
            p.dataReceived(stream[20:])
            self.assertEqual((p.received, p.refused), ([b"short", b"w" * 50], []))

    def test_max_length_raised_for_a_held_string(self) -> None:
        p = Recorder()
        p.MAX_LENGTH = 10
        connect(p)
        p.dataReceived(struct.pack("!I", 20)[:2])
        p.MAX_LENGTH = 100
        p.dataReceived(struct.pack("!I", 20)[2:] + b"y" * 20)
        self.assertEqual((p.received, p.refused), ([b"y" * 20], []))

    def test_max_length_lowered_while_a_string_is_held(self) -> None:
        """As in Twisted's class, the held prefix is checked again on the next read."""
        for join_limit in (0, 16 * 1024):  # the string on the long-string path, or joined
            p = Recorder()
            p._join_limit = join_limit
            connect(p)
            p.dataReceived(msg(b"z" * 50)[:30])
            p.MAX_LENGTH = 40
            p.dataReceived(b"z" * 5)
            self.assertEqual(p.refused, [50])
            self.assertEqual(p.recvd, msg(b"z" * 50)[:35])

    def test_after_a_refusal_later_bytes_are_dropped(self) -> None:
        p = Recorder()
        p.MAX_LENGTH = 4
        connect(p)
        p.dataReceived(msg(b"12345") + msg(b"ok"))
        p.dataReceived(msg(b"more"))
        p.resumeProducing()
        self.assertEqual((p.received, p.refused), ([], [5]))
        self.assertEqual(p.recvd, msg(b"12345") + msg(b"ok"))

    def test_struct_format_of_a_subclass(self) -> None:
        class LittleEndian(Recorder):
            structFormat = "<I"
            prefixLength = 4

        class Wide(Recorder):
            structFormat = "!Q"
            prefixLength = 8

        for cls, fmt in ((LittleEndian, "<I"), (Wide, "!Q")):
            p = cls()
            transport = connect(p)
            p.dataReceived(msg(b"hello", fmt)[:3])
            p.dataReceived(msg(b"hello", fmt)[3:] + msg(b"", fmt))
            self.assertEqual(p.received, [b"hello", b""])
            p.sendString(b"hi")
            self.assertEqual(transport.value(), msg(b"hi", fmt))

    def test_struct_format_changed_between_reads(self) -> None:
        p = Recorder()
        connect(p)
        p.dataReceived(msg(b"four"))
        p.structFormat, p.prefixLength = "!H", 2
        p.dataReceived(msg(b"two", "!H"))
        self.assertEqual(p.received, [b"four", b"two"])

    def test_bad_settings_are_clear_errors(self) -> None:
        class Signed(Recorder):
            structFormat = "!i"

        class Mismatch(Recorder):
            prefixLength = 2

        for cls, text in ((Signed, "not one unsigned integer"), (Mismatch, "prefixLength 2")):
            p = cls()
            connect(p)
            with self.assertRaises(ValueError) as caught:
                p.dataReceived(b"\x00")
            self.assertIn(text, str(caught.exception))
        p = Recorder()
        p.MAX_LENGTH = -1
        connect(p)
        self.assertRaises(ValueError, p.dataReceived, b"\x00")

    def test_spec_for_struct_format(self) -> None:
        self.assertIs(compat.spec_for_struct_format("!I"), INT32)
        self.assertIs(compat.spec_for_struct_format(">H"), INT16)
        self.assertIs(compat.spec_for_struct_format("!B"), compat.INT8)
        little = compat.spec_for_struct_format("<H")
        self.assertEqual((little.size, little.byte_order), (2, "little"))
        self.assertEqual(compat.spec_for_struct_format("!L").size, 4)
        for bad in ("!i", "!II", "", "!N", "x"):
            self.assertRaises(ValueError, compat.spec_for_struct_format, bad)


class RecvdTests(SynchronousTestCase):
    def test_recvd_assigned_between_reads(self) -> None:
        """Assigning outside a callback replaces the unparsed bytes at once."""
        p = Recorder()
        connect(p)
        p.dataReceived(msg(b"partial")[:5])
        p.recvd = msg(b"new")[:5]
        self.assertEqual(p.recvd, msg(b"new")[:5])
        p.dataReceived(msg(b"new")[5:])
        self.assertEqual(p.received, [b"new"])

    def test_recvd_assigned_before_any_data(self) -> None:
        p = Recorder()
        connect(p)
        p.recvd = msg(b"first")
        p.dataReceived(msg(b"second"))
        self.assertEqual(p.received, [b"first", b"second"])

    def test_recvd_assigned_by_a_callback_that_raises(self) -> None:
        p = Recorder()
        connect(p)

        def string_received(string: bytes) -> None:
            p.received.append(string)
            if string == b"a":
                p.recvd = msg(b"instead")
                raise RuntimeError("boom")

        p.stringReceived = string_received  # type: ignore[method-assign]
        self.assertRaises(RuntimeError, p.dataReceived, msg(b"a") + msg(b"dropped"))
        p.dataReceived(msg(b"after"))
        self.assertEqual(p.received, [b"a", b"instead", b"after"])

    def test_recvd_read_in_every_callback_of_a_held_string(self) -> None:
        stream = msg(b"L" * 70_000) + msg(b"s1") + msg(b"s2")[:3]
        seen: list[bytes] = []
        p = Recorder()
        connect(p)

        def string_received(string: bytes) -> None:
            p.received.append(string)
            seen.append(p.recvd)

        p.stringReceived = string_received  # type: ignore[method-assign]
        p.dataReceived(stream[:65536])
        p.dataReceived(stream[65536:])
        self.assertEqual(seen, [msg(b"s1") + msg(b"s2")[:3], msg(b"s2")[:3]])

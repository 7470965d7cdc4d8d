"""The sans-IO datagram codec: one datagram parsed into a frame or a drop reason."""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from sockproto.core.datagram import (
    CLIENT_KINDS,
    HEADER_SIZE,
    MAX_UDP_PAYLOAD,
    READ_SIZE,
    SERVER_KINDS,
    DropReason,
    encode_datagram,
    encode_error_datagram,
    parse_datagram,
)
from sockproto.core.decoder import Frame
from sockproto.core.header import SPF1
from sockproto.core.spf1 import MAX_ERROR_MESSAGE, ErrorCode, Kind, decode_error


def header(kind: int = 1, ident: int = 7, length: int = 0, magic: bytes = b"SP", version: int = 1) -> bytes:
    return struct.pack(">2sBBII", magic, version, kind, ident, length)


class LimitsTests(SynchronousTestCase):
    def test_udp_limits(self) -> None:
        self.assertEqual(MAX_UDP_PAYLOAD, 65535 - 20 - 8)
        self.assertGreater(READ_SIZE, MAX_UDP_PAYLOAD)
        self.assertEqual(HEADER_SIZE, SPF1.size)


class ParseTests(SynchronousTestCase):
    def test_request(self) -> None:
        frame = parse_datagram(header(1, 7, 5) + b"hello")
        assert isinstance(frame, Frame)
        self.assertEqual((frame.kind, frame.id, frame.payload), (Kind.REQUEST, 7, b"hello"))
        self.assertIs(frame.spec, SPF1)
        self.assertEqual(frame.fields["magic"], b"SP")

    def test_ping_and_empty_payload(self) -> None:
        frame = parse_datagram(header(Kind.PING, 3, 0))
        assert isinstance(frame, Frame)
        self.assertEqual((frame.kind, frame.id, frame.payload), (Kind.PING, 3, b""))

    def test_largest_datagram(self) -> None:
        payload = b"x" * (MAX_UDP_PAYLOAD - HEADER_SIZE)
        frame = parse_datagram(header(1, 1, len(payload)) + payload)
        assert isinstance(frame, Frame)
        self.assertEqual(len(frame.payload), MAX_UDP_PAYLOAD - HEADER_SIZE)

    def test_too_short(self) -> None:
        for data in (b"", b"S", b"SP\x01", header(1, 7, 0)[:-1]):
            self.assertIs(parse_datagram(data), DropReason.TOO_SHORT, data)

    def test_truncated(self) -> None:
        self.assertIs(parse_datagram(header(1, 7, 6) + b"hello"), DropReason.TRUNCATED)
        self.assertIs(parse_datagram(header(1, 7, 2**32 - 1)), DropReason.TRUNCATED)

    def test_trailing(self) -> None:
        self.assertIs(parse_datagram(header(1, 7, 4) + b"hello"), DropReason.TRAILING)
        self.assertIs(parse_datagram(header(1, 7, 0) + b"\0"), DropReason.TRAILING)

    def test_foreign(self) -> None:
        self.assertIs(parse_datagram(header(magic=b"XP")), DropReason.FOREIGN)
        self.assertIs(parse_datagram(header(version=2)), DropReason.FOREIGN)
        self.assertIs(parse_datagram(b"GET / HTTP/1.0\r\n\r\n"), DropReason.FOREIGN)

    def test_unexpected_kind(self) -> None:
        for kind in (Kind.RESPONSE, Kind.ERROR, Kind.PONG, 0, 6, 255):
            self.assertIs(parse_datagram(header(kind, 1, 0)), DropReason.UNEXPECTED_KIND, kind)

    def test_order_of_checks(self) -> None:
        # Foreign beats a bad length; a bad length beats a wrong kind.
        self.assertIs(parse_datagram(header(2, 1, 9, version=9)), DropReason.FOREIGN)
        self.assertIs(parse_datagram(header(Kind.RESPONSE, 1, 9)), DropReason.TRUNCATED)

    def test_client_kinds(self) -> None:
        for kind in (Kind.RESPONSE, Kind.ERROR, Kind.PONG):
            frame = parse_datagram(header(kind, 2, 1) + b"x", CLIENT_KINDS)
            self.assertIsInstance(frame, Frame)
        self.assertIs(parse_datagram(header(Kind.REQUEST, 2, 0), CLIENT_KINDS), DropReason.UNEXPECTED_KIND)
        self.assertEqual(SERVER_KINDS, {Kind.REQUEST, Kind.PING})

    def test_frame_type(self) -> None:
        built = parse_datagram(header(1, 9, 2) + b"ab", frame_type=lambda *args: args)
        self.assertEqual(built, (1, 9, b"ab", (b"SP", 1, 1, 9, 2), SPF1))

    def test_reason_names_a_counter(self) -> None:
        self.assertEqual(str(DropReason.UNEXPECTED_KIND), "unexpected kind")
        self.assertEqual(len({r.value for r in DropReason}), len(DropReason))


class EncodeTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        datagram = encode_datagram(Kind.RESPONSE, 42, b"payload")
        self.assertEqual(datagram, SPF1.encode(b"payload", kind=Kind.RESPONSE, id=42))
        frame = parse_datagram(datagram, CLIENT_KINDS)
        assert isinstance(frame, Frame)
        self.assertEqual((frame.kind, frame.id, frame.payload), (Kind.RESPONSE, 42, b"payload"))

    def test_error_fits(self) -> None:
        datagram = encode_error_datagram(5, ErrorCode.TOO_LARGE, "too big", 100)
        frame = parse_datagram(datagram, CLIENT_KINDS)
        assert isinstance(frame, Frame)
        self.assertEqual((frame.kind, frame.id), (Kind.ERROR, 5))
        self.assertEqual(decode_error(frame.payload), (ErrorCode.TOO_LARGE, "too big"))

    def test_error_message_cut_to_the_datagram_limit(self) -> None:
        datagram = encode_error_datagram(1, ErrorCode.HANDLER_FAILED, "é" * 100, 64)
        self.assertLessEqual(len(datagram), 64)
        frame = parse_datagram(datagram, CLIENT_KINDS)
        assert isinstance(frame, Frame)
        code, message = decode_error(frame.payload)
        self.assertEqual(code, ErrorCode.HANDLER_FAILED)
        self.assertEqual(message, "é" * 25)  # 50 bytes of room, whole characters only

    def test_error_message_cut_to_the_spf1_limit(self) -> None:
        datagram = encode_error_datagram(1, ErrorCode.HANDLER_FAILED, "x" * 5000, MAX_UDP_PAYLOAD)
        self.assertEqual(len(datagram), HEADER_SIZE + 2 + MAX_ERROR_MESSAGE)

    def test_error_needs_room(self) -> None:
        self.assertRaises(ValueError, encode_error_datagram, 1, ErrorCode.TOO_LARGE, "x", HEADER_SIZE + 1)

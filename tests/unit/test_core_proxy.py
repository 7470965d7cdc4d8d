"""The PROXY protocol header (v1 and v2): parsing in any chunking, refusals, encoders."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from itertools import pairwise
from typing import Literal

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core.proxy import (
    MAX_V2_LENGTH,
    V2_SIGNATURE,
    Address,
    ProxyFamily,
    ProxyHeader,
    ProxyHeaderParser,
    ProxyProtocolError,
    TLVType,
    crc32c,
    parse_datagram_header,
)
from sockproto.core.proxy_encode import encode_v1, encode_v2

Case = tuple[bytes, ProxyHeader]
IP = ipaddress.IPv4Address | ipaddress.IPv6Address
SPELLINGS: list[Callable[[IP], str]] = [str, lambda a: a.exploded, lambda a: str(a).upper()]  # all valid
PORTS = st.integers(0, 65535)
SIG = V2_SIGNATURE
V4 = SIG + b"\x21\x11"  # PROXY over TCP/IPv4, before the length field
ADDRS4 = bytes([192, 0, 2, 1, 198, 51, 100, 2]) + struct.pack(">HH", 4000, 80)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in pairwise([0, *points, len(data)])]


def wire_v2(cmd: int, family: int, body: bytes) -> bytes:
    """A v2 header built by hand, independently of :func:`encode_v2`."""
    return SIG + bytes((0x20 | cmd, family)) + struct.pack(">H", len(body)) + body


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack(">BH", kind, len(value)) + value


def parse(data: bytes, **kw: int) -> ProxyHeader | None:
    return ProxyHeaderParser(**kw).feed(data)


def fails_at(data: bytes, **kw: int) -> int:
    """Feed ``data`` byte by byte: the index of the byte that gets it refused."""
    parser = ProxyHeaderParser(**kw)
    for i in range(len(data)):
        try:
            parser.feed(data[i : i + 1])
        except ProxyProtocolError:
            return i
    raise AssertionError(f"{data!r} was not refused")


@st.composite
def v1_cases(draw: st.DrawFn) -> Case:
    version: Literal[4, 6] | None = draw(st.sampled_from([4, 6, None]))
    if version is None:
        junk = draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=90))
        line = "PROXY UNKNOWN" + draw(st.sampled_from(["", " " + junk]))
        return f"{line}\r\n".encode(), ProxyHeader(1, "PROXY", ProxyFamily.UNKNOWN, None, None)
    src, dst = draw(st.ip_addresses(v=version)), draw(st.ip_addresses(v=version))
    sport, dport = draw(PORTS), draw(PORTS)
    spell = draw(st.sampled_from(SPELLINGS))
    line = f"PROXY TCP{version} {spell(src)} {spell(dst)} {sport} {dport}\r\n"
    family = ProxyFamily.TCP4 if version == 4 else ProxyFamily.TCP6
    return line.encode(), ProxyHeader(1, "PROXY", family, (str(src), sport), (str(dst), dport))


UNIX_PATHS = st.one_of(
    st.binary(max_size=108).filter(lambda b: b"\0" not in b),
    st.binary(min_size=1, max_size=107).filter(lambda b: not b.endswith(b"\0")).map(lambda b: b"\0" + b),
)
TLVS = st.lists(st.tuples(st.integers(0, 255).filter(lambda t: t != 3), st.binary(max_size=40)), max_size=4)


@st.composite
def v2_cases(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(["inet4", "inet6", "unix", "unspec", "local", "local-inet"]))
    datagram = draw(st.booleans())
    tlvs = tuple(draw(TLVS))
    extensions = b"".join(tlv(t, v) for t, v in tlvs)
    cmd, family, raw = 1, 0x00, b""
    source: Address = None
    destination: Address = None
    if kind in ("inet4", "inet6"):
        version: Literal[4, 6] = 4 if kind == "inet4" else 6
        src, dst = draw(st.ip_addresses(v=version)), draw(st.ip_addresses(v=version))
        sport, dport = draw(PORTS), draw(PORTS)
        family = (0x11 if version == 4 else 0x21) + datagram
        raw = src.packed + dst.packed + struct.pack(">HH", sport, dport)
        source, destination = (str(src), sport), (str(dst), dport)
    elif kind == "unix":
        paths = draw(UNIX_PATHS), draw(UNIX_PATHS)
        family = 0x31 + datagram
        raw = b"".join(p.ljust(108, b"\0") for p in paths)
        source, destination = (p.decode("utf-8", "surrogateescape") for p in paths)
    elif kind == "local":
        cmd = 0
    elif kind == "local-inet":  # a LOCAL header may declare a family: its addresses are ignored
        cmd, family, raw = 0, 0x11, draw(st.binary(min_size=12, max_size=12))
    wire = wire_v2(cmd, family, raw + extensions)
    command = "PROXY" if cmd else "LOCAL"
    if kind != "local-inet":  # the encoder writes exactly the same bytes
        args = (source, destination, command, tlvs)
        assert encode_v2(*args, datagram=datagram) == wire, kind  # type: ignore[arg-type]
    return wire, ProxyHeader(2, command, ProxyFamily(family), source, destination, tlvs)  # type: ignore[arg-type]


def feed_all(chunks: list[bytes], test: SynchronousTestCase) -> tuple[ProxyHeader | None, bytes]:
    """Feed ``chunks`` until the header comes: it and every byte after it."""
    parser = ProxyHeaderParser()
    fed = 0
    for i, chunk in enumerate(chunks):
        header = parser.feed(chunk)
        fed += len(chunk)
        if header is not None:
            test.assertTrue(parser.complete)
            test.assertEqual(parser.buffered, 0)
            test.assertIs(parser.header, header)
            test.assertEqual(parser.unconsumed, parser.rest)
            test.assertRaises(RuntimeError, parser.feed, b"more")
            return header, parser.rest + b"".join(chunks[i + 1 :])
        test.assertEqual((parser.complete, parser.buffered), (False, fed))
    return None, b""


class ChunkingTests(SynchronousTestCase):
    @given(st.one_of(v1_cases(), v2_cases()), st.binary(max_size=100), st.lists(st.integers(0, 500)))
    def test_any_header_in_any_chunking(self, case: Case, trailing: bytes, cuts: list[int]) -> None:
        wire, expected = case
        stream = wire + trailing
        for chunks in (split(stream, cuts), [stream], [stream[i : i + 1] for i in range(len(stream))]):
            self.assertEqual(feed_all(chunks, self), (expected, trailing))
        self.assertEqual(parse_datagram_header(stream), (expected, trailing))

    @given(st.one_of(v1_cases(), v2_cases()), st.data())
    def test_a_cut_header_waits_then_fails_at_eof(self, case: Case, data: st.DataObject) -> None:
        wire = case[0]
        cut = data.draw(st.integers(1, len(wire) - 1))
        parser = ProxyHeaderParser()
        self.assertIsNone(parser.feed(wire[:cut]))
        self.assertEqual((parser.complete, parser.buffered, parser.rest), (False, cut, b""))
        self.assertRaises(ProxyProtocolError, parser.eof)
        self.assertRaises(ProxyProtocolError, parse_datagram_header, wire[:cut])

    @given(
        st.sampled_from([b"", b"PROXY ", b"PROXY TCP4 ", SIG, SIG + b"\x21"]),
        st.binary(max_size=300),
        st.lists(st.integers(0, 400), max_size=8),
    )
    def test_random_bytes_give_the_same_outcome_in_any_chunking(
        self, prefix: bytes, tail: bytes, cuts: list[int]
    ) -> None:
        def outcome(chunks: list[bytes]) -> object:
            try:
                return feed_all(chunks, self)
            except ProxyProtocolError:
                return "refused"  # the message quotes what arrived, which depends on the chunks

        stream = prefix + tail
        self.assertEqual(outcome(split(stream, cuts)), outcome([stream]))

    @given(st.sampled_from(["1.2.3.4", "::1", "::ffff:10.0.0.1"]), PORTS, TLVS, st.booleans())
    def test_encoders_round_trip(self, host: str, port: int, tlvs: list[tuple[int, bytes]], dg: bool) -> None:
        peer = "127.0.0.1" if ":" not in host else "::2"
        got = parse(encode_v2((host, port), (peer, 1), tlvs=tlvs, datagram=dg, checksum=True))
        assert got is not None
        self.assertEqual(got.source, (str(ipaddress.ip_address(host)), port))
        self.assertEqual((got.family.name[:3], got.tlvs[:-1]), ("UDP" if dg else "TCP", tuple(tlvs)))
        self.assertEqual(got.tlvs[-1][0], TLVType.CRC32C)
        v1 = parse(encode_v1((host, port), (peer, 1)))
        assert v1 is not None
        self.assertEqual((v1.version, v1.source, v1.destination), (1, got.source, got.destination))


BAD = [
    (b"GET / HTTP/1.1\r\n\r\n", "neither 'PROXY ' nor the v2 signature"),
    (b"\x16\x03\x01\x02\x00", "neither"),
    (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "neither"),
    (b"PROXY\r\n", "neither"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bare LF"),
    (b"PROXY UNKNOWN " + b"x" * 93, "without CRLF in its first 107 bytes"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "needs 4 fields"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "needs 4 fields"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "needs 4 fields"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "must be TCP4, TCP6 or UNKNOWN"),
    (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "must be TCP4, TCP6 or UNKNOWN"),
    (b"PROXY UNKNOWNX\r\n", "must be TCP4, TCP6 or UNKNOWN"),
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "source address '1.2.3.256' is not an IPv4"),
    (b"PROXY TCP4 1.2.3.4 5.6.07.8 1 2\r\n", "destination address '5.6.07.8' is not an IPv4"),
    (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "not an IPv4"),
    (b"PROXY TCP4 ::1 ::2 1 2\r\n", "TCP4 source address '::1' is not an IPv4"),
    (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "TCP6 source address '1.2.3.4' is not an IPv6"),
    (b"PROXY TCP6 fe80::1%eth0 ::2 1 2\r\n", "not an IPv6"),
    (b"PROXY TCP6 ::1 ::g 1 2\r\n", "not an IPv6"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "source port '65536'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 080\r\n", "destination port '080'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n", "destination port ''"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "port '2\\r'"),
    (SIG + b"\x11\x11\x00\x00", "version must be 2"),
    (SIG + b"\x31\x11\x00\x00", "version must be 2"),
    (SIG + b"\x22\x11\x00\x00", "command LOCAL (0) or PROXY (1), got byte 0x22"),
    (SIG + b"\x21\x41\x00\x00", "family and transport byte 0x41"),
    (SIG + b"\x21\x13\x00\x00", "byte 0x13"),
    (SIG + b"\x21\x10\x00\x00", "byte 0x10"),
    (SIG + b"\x20\x01\x00\x00", "byte 0x01"),
    (wire_v2(1, 0x11, ADDRS4[:8]), "TCP4 header needs 12 address bytes, it has 8"),
    (wire_v2(1, 0x21, ADDRS4), "TCP6 header needs 36 address bytes, it has 12"),
    (wire_v2(1, 0x11, ADDRS4 + b"\x01\x00\x0a" + b"ab"), "TLV 0x01 of 10 bytes runs 8 bytes past"),
    (wire_v2(1, 0x11, ADDRS4 + b"\x01\x00"), "ends with 2 stray bytes"),
    (wire_v2(1, 0x00, b"\x05"), "ends with 1 stray bytes"),
    (wire_v2(1, 0x11, ADDRS4 + tlv(3, b"abc")), "CRC32C TLV must hold 4 bytes, not 3"),
    (wire_v2(1, 0x11, ADDRS4 + tlv(3, b"abcd")), "fails its CRC32C check"),
]


class RefusalTests(SynchronousTestCase):
    def test_bad_headers(self) -> None:
        for data, message in BAD:
            with self.subTest(data=data):
                error = self.assertRaises(ProxyProtocolError, parse, data)
                self.assertIn(message, str(error))
                self.assertIsInstance(error, ValueError)

    def test_refused_as_soon_as_a_byte_rules_the_header_out(self) -> None:
        self.assertEqual(fails_at(b"GET /"), 0)
        self.assertEqual(fails_at(b"\x00"), 0)
        self.assertEqual(fails_at(b"PROXX"), 4)
        self.assertEqual(fails_at(b"\r\n\r\n\x00\r\nQUIX"), 10)
        self.assertEqual(fails_at(b"PROXY FOO"), 6)
        self.assertEqual(fails_at(b"PROXY UNKNOWNX"), 13)
        self.assertEqual(fails_at(b"PROXY TCP4 1.2.3.4 x"), 19)
        self.assertEqual(fails_at(b"PROXY TCP4 1.2.3.4\r5"), 19)
        self.assertEqual(fails_at(SIG + b"\x12"), 12)
        self.assertEqual(fails_at(SIG + b"\x21\x14"), 13)
        self.assertEqual(fails_at(V4 + b"\x02\x09", max_length=536), 15)
        self.assertEqual(fails_at(V4 + b"\xff\xff" + ADDRS4, max_length=536), 15)

    def test_prefixes_of_both_versions_wait(self) -> None:
        for prefix in (b"P", b"PROXY", b"PROXY TCP6 ::1", b"PROXY UNKNOWN\r", b"\r", SIG, V4 + b"\x00"):
            parser = ProxyHeaderParser()
            self.assertIsNone(parser.feed(prefix))
            self.assertEqual(parser.buffered, len(prefix))

    def test_an_error_sticks(self) -> None:
        parser = ProxyHeaderParser()
        first = self.assertRaises(ProxyProtocolError, parser.feed, b"X")
        again = self.assertRaises(ProxyProtocolError, parser.feed, b"PROXY UNKNOWN\r\n")
        self.assertEqual(str(again), str(first))
        self.assertEqual((parser.complete, parser.buffered), (False, 0))

    def test_length_limit(self) -> None:
        header = wire_v2(1, 0x11, ADDRS4 + tlv(TLVType.NOOP, b"x" * 500))
        self.assertEqual(len(header), 531)
        self.assertIsNotNone(parse(header, max_length=531))
        error = self.assertRaises(ProxyProtocolError, parse, header[:16], max_length=530)
        self.assertIn("announces 531 bytes, over the limit of 530", str(error))
        biggest = encode_v2(None, None, tlvs=[(TLVType.NOOP, b"\0" * (65535 - 3))])
        self.assertEqual(len(biggest), MAX_V2_LENGTH)
        self.assertEqual(parse(biggest).tlvs[0][1], b"\0" * 65532)  # type: ignore[union-attr]
        for wrong in (15, MAX_V2_LENGTH + 1):
            self.assertRaises(ValueError, ProxyHeaderParser, max_length=wrong)

    def test_v1_line_limit_is_107_bytes(self) -> None:
        longest = b"PROXY UNKNOWN " + b"f" * 91 + b"\r\n"
        self.assertEqual(len(longest), 107)
        self.assertEqual(parse(longest), ProxyHeader(1, "PROXY", ProxyFamily.UNKNOWN, None, None))
        self.assertRaises(ProxyProtocolError, parse, b"PROXY UNKNOWN " + b"f" * 92 + b"\r\n")

    def test_a_changed_byte_fails_the_checksum(self) -> None:
        header = bytearray(encode_v2(("192.0.2.1", 4000), ("198.51.100.2", 80), checksum=True))
        header[17] ^= 0x40
        self.assertIn("CRC32C", str(self.assertRaises(ProxyProtocolError, parse, bytes(header))))

    def test_eof(self) -> None:
        parser = ProxyHeaderParser()
        parser.eof()  # nothing received: not a partial header
        parser.feed(b"PROXY TCP4 1.2.3.4")
        self.assertIn("after 18 bytes", str(self.assertRaises(ProxyProtocolError, parser.eof)))
        parser.feed(b" 5.6.7.8 1 2\r\n")
        parser.eof()


class HeaderTests(SynchronousTestCase):
    def test_spec_example(self) -> None:
        line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        self.assertEqual(encode_v1(("192.168.0.1", 56324), ("192.168.0.11", 443)), line)
        parser = ProxyHeaderParser()
        header = parser.feed(line + b"GET / HTTP/1.1\r\n")
        self.assertEqual(
            header,
            ProxyHeader(1, "PROXY", ProxyFamily.TCP4, ("192.168.0.1", 56324), ("192.168.0.11", 443)),
        )
        self.assertEqual(parser.rest, b"GET / HTTP/1.1\r\n")

    def test_v2_tcp4_bytes(self) -> None:
        header = encode_v2(("192.0.2.1", 4000), ("198.51.100.2", 80), tlvs=[(TLVType.AUTHORITY, b"ex.org")])
        self.assertEqual(header, V4 + b"\x00\x15" + ADDRS4 + b"\x02\x00\x06ex.org")
        got = parse(header)
        assert got is not None
        self.assertEqual((got.tlv(TLVType.AUTHORITY), got.tlv(TLVType.ALPN)), (b"ex.org", None))

    def test_local_ignores_whatever_family_it_declares(self) -> None:
        for family, body in ((0x11, b""), (0x11, ADDRS4), (0x31, b"x" * 10), (0x00, tlv(5, b"id"))):
            got = parse(wire_v2(0, family, body))
            assert got is not None
            self.assertEqual((got.command, got.source, got.destination), ("LOCAL", None, None))
            self.assertEqual(got.family, ProxyFamily(family))
        self.assertEqual(parse(wire_v2(0, 0x00, tlv(5, b"id"))).tlvs, ((5, b"id"),))  # type: ignore[union-attr]

    def test_crc32c_check_value(self) -> None:
        self.assertEqual(crc32c(b"123456789"), 0xE3069283)  # RFC 3720 B.4's check value
        self.assertEqual(crc32c(b""), 0)

    def test_unix_paths(self) -> None:
        got = parse(encode_v2("/run/app.sock", "\0abstract", datagram=True))
        assert got is not None
        self.assertEqual(got.family, ProxyFamily.UNIX_DGRAM)
        self.assertEqual((got.source, got.destination), ("/run/app.sock", "\0abstract"))
        self.assertEqual(parse(wire_v2(1, 0x31, bytes(216))).source, "")  # type: ignore[union-attr]

    def test_encoder_refusals(self) -> None:
        a4, a6 = ("192.0.2.1", 1), ("::1", 2)
        for call in (
            lambda: encode_v1(a4, a6),
            lambda: encode_v1(a4, None),
            lambda: encode_v1(("192.0.2.1", 65536), a4),
            lambda: encode_v1(("example.org", 1), a4),
            lambda: encode_v2(a4, a6),
            lambda: encode_v2(None, a4),
            lambda: encode_v2(a4, "/path"),
            lambda: encode_v2(a4, a4, "LOCAL"),
            lambda: encode_v2(a4, a4, "RELAY"),  # type: ignore[arg-type]
            lambda: encode_v2("x" * 109, "/p"),
            lambda: encode_v2(a4, a4, tlvs=[(256, b"")]),
            lambda: encode_v2(a4, a4, tlvs=[(1, bytes(65536))]),
            lambda: encode_v2(a4, a4, tlvs=[(1, bytes(65532))]),
        ):
            self.assertRaises(ValueError, call)
        self.assertEqual(encode_v1(None, None), b"PROXY UNKNOWN\r\n")
        self.assertEqual(encode_v2(None, None, "LOCAL"), SIG + b"\x20\x00\x00\x00")

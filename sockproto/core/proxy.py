"""The PROXY protocol (HAProxy's versions 1 and 2): parse and build the header.

A proxy that relays a connection (HAProxy, a load balancer, stunnel) may start it with
a header naming the original client, so that the server sees that client instead of
the proxy.  :class:`ProxyHeaderParser` takes the first bytes of a connection in any
chunking and returns a :class:`ProxyHeader` once the header is whole; the bytes after
it (:attr:`~ProxyHeaderParser.rest`) are the connection's ordinary data.

It never guesses: a connection on a PROXY listener must start with ``PROXY `` (v1,
text) or the 12-byte v2 signature, and anything else is refused as soon as a byte
rules out both, as the spec asks ("abort the connection as soon as possible").  A
header's fields are checked as strictly as the spec writes them: one space between v1
fields, no leading zeros, CRLF (never a bare CR or LF), at most 107 bytes per v1 line,
only the v2 versions, commands and family bytes the spec lists, TLVs within the
announced length, and a CRC32C TLV (type ``0x03``) if present must match.

:mod:`sockproto.core.proxy_encode` builds headers (for clients and for tests).

Plain Python: no Twisted import (the sans-IO rule).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Final, Literal

__all__ = [
    "MAX_V1_LENGTH",
    "UNIX_SIZE",
    "MAX_V2_LENGTH",
    "V2_SIGNATURE",
    "Address",
    "Command",
    "ProxyFamily",
    "ProxyHeader",
    "ProxyHeaderParser",
    "ProxyProtocolError",
    "TLVType",
    "crc32c",
    "parse_datagram_header",
]

MAX_V1_LENGTH: Final = 107
"""The longest v1 line, CRLF included (``PROXY UNKNOWN`` with two full IPv6 addresses)."""

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
"""The 12 bytes that start every v2 header."""

V2_FIXED: Final = 16
"""The fixed part of a v2 header: signature, version and command, family, length."""

MAX_V2_LENGTH: Final = V2_FIXED + 0xFFFF
"""The longest v2 header: the fixed part and the most its 16-bit length field can announce."""

Command = Literal["PROXY", "LOCAL"]
Address = tuple[str, int] | str | None
"""``(host, port)`` for IP families, a path for UNIX ones, ``None`` when there is none."""

_V1_PREFIX: Final = b"PROXY "
_V1_PROTOCOLS: Final = (b"TCP4 ", b"TCP6 ", b"UNKNOWN")
_V1_ADDRESS_BYTES: Final = frozenset(b"0123456789abcdefABCDEF.: \r")
_V1_PORT: Final = re.compile(r"(?:0|[1-9][0-9]{0,4})\Z")
_V6_TEXT: Final = frozenset("0123456789abcdefABCDEF:.")
UNIX_SIZE: Final = 108
"""The size of a v2 UNIX address (``sun_path``), in bytes."""


class ProxyProtocolError(ValueError):
    """The connection does not start with a valid PROXY protocol header."""


class ProxyFamily(Enum):
    """What the header says the original connection was; the value is v2's family byte.

    ``TCP4``, ``TCP6`` and ``UNKNOWN`` are v1's names; v2 adds UDP and UNIX sockets.
    """

    UNKNOWN = 0x00
    TCP4 = 0x11
    UDP4 = 0x12
    TCP6 = 0x21
    UDP6 = 0x22
    UNIX = 0x31
    UNIX_DGRAM = 0x32


class TLVType(IntEnum):
    """The v2 TLV types the spec registers (``PP2_TYPE_*``)."""

    ALPN = 0x01
    AUTHORITY = 0x02
    CRC32C = 0x03
    NOOP = 0x04
    UNIQUE_ID = 0x05
    SSL = 0x20
    NETNS = 0x30


_FAMILY_BYTES: Final = frozenset(f.value for f in ProxyFamily)
_ADDRESS_SIZES: Final = {0x0: 0, 0x1: 12, 0x2: 36, 0x3: 2 * UNIX_SIZE}  # by the family nibble


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed PROXY protocol header.

    :ivar version: 1 (text) or 2 (binary).
    :ivar command: ``"PROXY"`` (relayed: use the addresses) or ``"LOCAL"`` (v2 only,
        the proxy's own connection, a health check: keep the real peer).
    :ivar family: the original connection's family, as declared (also for LOCAL).
    :ivar source: the original client, ``None`` for LOCAL and for ``UNKNOWN``, in
        which cases the connection keeps its real peer.
    :ivar destination: the address the client connected to, likewise.
    :ivar tlvs: v2's ``(type, value)`` extensions in wire order (see :class:`TLVType`).
    """

    version: Literal[1, 2]
    command: Command
    family: ProxyFamily
    source: Address
    destination: Address
    tlvs: tuple[tuple[int, bytes], ...] = ()

    def tlv(self, kind: int) -> bytes | None:
        """The value of the first TLV of type ``kind``, or ``None`` if there is none."""
        return next((value for t, value in self.tlvs if t == kind), None)


class ProxyHeaderParser:
    """Parse the PROXY header at the start of one connection, fed in any chunking.

    Feed it every byte received until :meth:`feed` returns the header, then hand
    :attr:`rest` to the protocol as ordinary data and drop the parser.  The header is
    parsed once: feeding a complete parser raises :class:`RuntimeError` (the bytes
    belong to the protocol), and feeding a failed one raises its error again.

    :param max_length: the longest v2 header accepted, in bytes (a v1 line is at most
        107 bytes whatever this says).  A header announcing more is refused as soon as
        its length field arrives.  The default, 16 + 65535, is all the 16-bit length
        field can say, so no valid header is refused.  The spec makes the header fit
        the smallest TCP segment (536 bytes) *without* TLVs, but TLVs may be longer (a
        DER client certificate in ``PP2_SUBTYPE_SSL_CLIENT_CERT`` is often over 1 kB),
        and only trusted proxies may send a header at all, so the bounded 64 kB worst
        case per connection is the better default.  Lower it (536 is sensible) when
        the proxies send no large TLVs.
    :raises ValueError: if ``max_length`` is below 16 or above 16 + 65535.
    """

    __slots__ = ("_buffer", "_error", "_header", "_rest", "max_length")

    def __init__(self, *, max_length: int = MAX_V2_LENGTH) -> None:
        if not V2_FIXED <= max_length <= MAX_V2_LENGTH:
            raise ValueError(f"max_length must be between {V2_FIXED} and {MAX_V2_LENGTH}, not {max_length}")
        self.max_length = max_length
        self._buffer = bytearray()
        self._header: ProxyHeader | None = None
        self._error: ProxyProtocolError | None = None
        self._rest = b""

    @property
    def complete(self) -> bool:
        """Whether the header has been parsed."""
        return self._header is not None

    @property
    def header(self) -> ProxyHeader | None:
        """The parsed header, or ``None`` before it is complete."""
        return self._header

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of the header (0 once complete)."""
        return len(self._buffer)

    @property
    def rest(self) -> bytes:
        """The bytes received after the header: the protocol's first data (``b""`` before)."""
        return self._rest

    unconsumed = rest

    def feed(self, data: bytes) -> ProxyHeader | None:
        """Take more bytes of the connection; the header once complete, else ``None``.

        :raises ProxyProtocolError: as soon as the bytes cannot start a valid header;
            the connection must then be dropped.
        :raises RuntimeError: if the header was already returned.
        """
        if self._error is not None:
            raise ProxyProtocolError(*self._error.args)
        if self._header is not None:
            raise RuntimeError("the PROXY header is already parsed: give further bytes to the protocol")
        buffer = self._buffer
        buffer += data
        try:
            done = _parse_v1(buffer) if buffer[:1] != b"\r" else _parse_v2(buffer, self.max_length)
        except ProxyProtocolError as e:
            self._error = e
            buffer.clear()
            raise
        if done is None:
            return None
        self._header, size = done
        self._rest = bytes(buffer[size:])
        buffer.clear()
        return self._header

    def eof(self) -> None:
        """Say that the connection ended; fine before any byte or after the header.

        :raises ProxyProtocolError: if it ended inside a header (the spec says a
            partial header must be rejected).
        """
        if self._buffer:
            raise ProxyProtocolError(f"the connection ended after {self.buffered} bytes of a PROXY header")


def parse_datagram_header(data: bytes, *, max_length: int = MAX_V2_LENGTH) -> tuple[ProxyHeader, bytes]:
    """Parse the header that starts one datagram; return it and the payload after it.

    Over UDP the header and its payload travel in one datagram, parsed on its own.

    :raises ProxyProtocolError: if ``data`` does not start with a whole valid header.
    """
    parser = ProxyHeaderParser(max_length=max_length)
    header = parser.feed(data)
    if header is None:
        raise ProxyProtocolError(f"the datagram ends inside its PROXY header ({len(data)} bytes)")
    return header, parser.rest


def _parse_v1(buffer: bytearray) -> tuple[ProxyHeader, int] | None:
    """Parse a v1 line at the start of ``buffer``: the header and its size, or ``None``."""
    head = bytes(buffer[:MAX_V1_LENGTH])
    if head[:6] != _V1_PREFIX[: len(head)]:
        raise ProxyProtocolError(f"not a PROXY header: neither 'PROXY ' nor the v2 signature: {head[:16]!r}")
    end = head.find(b"\n")
    if end < 0:
        if len(head) >= MAX_V1_LENGTH:
            raise ProxyProtocolError(f"PROXY v1 line without CRLF in its first {MAX_V1_LENGTH} bytes")
        _check_v1_start(head[6:])
        return None
    if head[end - 1] != ord("\r"):
        raise ProxyProtocolError("PROXY v1 line ends with a bare LF instead of CRLF")
    return _v1_header(head[: end - 1]), end + 1


def _check_v1_start(tail: bytes) -> None:
    """Refuse an unfinished v1 line early if it cannot become a valid one."""
    if not any(tail[: len(p)] == p[: len(tail)] for p in _V1_PROTOCOLS):
        raise ProxyProtocolError(f"PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN, got {tail[:8]!r}")
    if tail.startswith(b"UNKNOWN") and tail[7:8] not in (b"", b" ", b"\r"):
        raise ProxyProtocolError(f"PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN, got {tail[:8]!r}")
    if tail[:3] == b"TCP" and (not _V1_ADDRESS_BYTES.issuperset(tail[5:]) or b"\r" in tail[5:-1]):
        raise ProxyProtocolError(f"PROXY v1 line has characters no address or port can hold: {tail[5:]!r}")


def _v1_header(line: bytes) -> ProxyHeader:
    """Decode a whole v1 line, CRLF removed."""
    fields = line.split(b" ")
    protocol = fields[1] if len(fields) > 1 else b""
    if protocol == b"UNKNOWN":  # the rest of the line is ignored, as the spec says
        return ProxyHeader(1, "PROXY", ProxyFamily.UNKNOWN, None, None)
    if protocol not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN, got {protocol[:8]!r}")
    if len(fields) != 6:
        raise ProxyProtocolError(
            f"PROXY v1 {protocol.decode()} line needs 4 fields after it, one space apart: {line!r}"
        )
    family = ProxyFamily.TCP4 if protocol == b"TCP4" else ProxyFamily.TCP6
    source = (_v1_host(fields[2], family, "source"), _v1_port(fields[4], "source"))
    destination = (_v1_host(fields[3], family, "destination"), _v1_port(fields[5], "destination"))
    return ProxyHeader(1, "PROXY", family, source, destination)


def _v1_host(field: bytes, family: ProxyFamily, which: str) -> str:
    text = field.decode("ascii", "replace")
    v4 = family is ProxyFamily.TCP4
    try:  # IPv4Address refuses leading zeros; the character check refuses an IPv6 zone (%eth0)
        if not v4 and not _V6_TEXT.issuperset(text):
            raise ValueError(text)
        return str(ipaddress.IPv4Address(text) if v4 else ipaddress.IPv6Address(text))
    except ValueError:
        kind = "an IPv4" if v4 else "an IPv6"
        raise ProxyProtocolError(
            f"PROXY v1 {family.name} {which} address {text!r} is not {kind} address as the spec writes it"
        ) from None


def _v1_port(field: bytes, which: str) -> int:
    text = field.decode("ascii", "replace")
    if _V1_PORT.match(text) is None or int(text) > 0xFFFF:
        raise ProxyProtocolError(f"PROXY v1 {which} port {text!r} is not a number from 0 to 65535")
    return int(text)


def _parse_v2(buffer: bytearray, max_length: int) -> tuple[ProxyHeader, int] | None:
    """Parse a v2 header at the start of ``buffer``: the header and its size, or ``None``."""
    head = bytes(buffer[:V2_FIXED])
    if head[:12] != V2_SIGNATURE[: len(head)]:
        raise ProxyProtocolError(f"not a PROXY header: the v2 signature is wrong: {head[:12]!r}")
    if len(head) > 12 and (head[12] >> 4 != 2 or head[12] & 0xF > 1):
        raise ProxyProtocolError(
            f"PROXY v2 version must be 2 and command LOCAL (0) or PROXY (1), got byte 0x{head[12]:02x}"
        )
    if len(head) > 13 and head[13] not in _FAMILY_BYTES:
        raise ProxyProtocolError(f"PROXY v2 family and transport byte 0x{head[13]:02x} is not a valid one")
    if len(head) < V2_FIXED:
        return None
    size = V2_FIXED + int.from_bytes(head[14:16], "big")
    if size > max_length:
        raise ProxyProtocolError(f"PROXY v2 header announces {size} bytes, over the limit of {max_length}")
    if len(buffer) < size:
        return None
    return _v2_header(bytes(buffer[:size])), size


def _v2_header(block: bytes) -> ProxyHeader:
    """Decode a whole v2 header."""
    command: Command = "PROXY" if block[12] & 0xF else "LOCAL"
    family = ProxyFamily(block[13])
    start = V2_FIXED + _ADDRESS_SIZES[block[13] >> 4]
    if start > len(block):
        if command == "LOCAL":  # the family is ignored: nothing to read in the block
            return ProxyHeader(2, command, family, None, None)
        raise ProxyProtocolError(
            f"PROXY v2 {family.name} header needs {start - V2_FIXED} address bytes, "
            f"it has {len(block) - V2_FIXED}"
        )
    tlvs = _v2_tlvs(block, start)
    if command == "LOCAL" or family is ProxyFamily.UNKNOWN:
        return ProxyHeader(2, command, family, None, None, tlvs)
    raw = block[V2_FIXED:start]
    source: Address
    destination: Address
    if family in (ProxyFamily.UNIX, ProxyFamily.UNIX_DGRAM):
        source, destination = _unix_path(raw[:UNIX_SIZE]), _unix_path(raw[UNIX_SIZE:])
    else:
        width = 4 if family in (ProxyFamily.TCP4, ProxyFamily.UDP4) else 16
        hosts = [str(ipaddress.ip_address(raw[i : i + width])) for i in (0, width)]
        ports = [int.from_bytes(raw[i : i + 2], "big") for i in (2 * width, 2 * width + 2)]
        source, destination = (hosts[0], ports[0]), (hosts[1], ports[1])
    return ProxyHeader(2, command, family, source, destination, tlvs)


def _v2_tlvs(block: bytes, start: int) -> tuple[tuple[int, bytes], ...]:
    """Read the TLVs from ``start`` to the end of ``block``, and check a CRC32C one."""
    tlvs: list[tuple[int, bytes]] = []
    checksums: list[int] = []  # offsets of CRC32C values
    at, end = start, len(block)
    while at < end:
        if end - at < 3:
            raise ProxyProtocolError(f"PROXY v2 header ends with {end - at} stray bytes after its TLVs")
        kind, size = block[at], int.from_bytes(block[at + 1 : at + 3], "big")
        at += 3
        if at + size > end:
            raise ProxyProtocolError(
                f"PROXY v2 TLV 0x{kind:02x} of {size} bytes runs {at + size - end} bytes past the header"
            )
        if kind == TLVType.CRC32C:
            if size != 4:
                raise ProxyProtocolError(f"PROXY v2 CRC32C TLV must hold 4 bytes, not {size}")
            checksums.append(at)
        tlvs.append((kind, block[at : at + size]))
        at += size
    if len(checksums) > 1:
        raise ProxyProtocolError("PROXY v2 header has more than one CRC32C TLV")
    if checksums:
        at = checksums[0]
        expected = crc32c(block[:at] + b"\0\0\0\0" + block[at + 4 :])
        if int.from_bytes(block[at : at + 4], "big") != expected:
            raise ProxyProtocolError("PROXY v2 header fails its CRC32C check")
    return tuple(tlvs)


def _unix_path(raw: bytes) -> str:
    """Decode a 108-byte ``sun_path``: up to its NUL, or a Linux abstract name."""
    if raw[:1] == b"\0" and raw.strip(b"\0"):
        path = b"\0" + raw[1:].rstrip(b"\0")  # abstract: keeps its leading NUL
    else:
        path = raw.partition(b"\0")[0]
    return path.decode("utf-8", "surrogateescape")


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return tuple(table)


_CRC_TABLE: Final = _crc_table()


def crc32c(data: bytes) -> int:
    """The CRC32C (Castagnoli) of ``data``, as the CRC32C TLV holds it (RFC 4960 B).

    Pure Python: about 4 ms for the largest header (64 kB), microseconds for a usual one.
    """
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF

"""Build PROXY protocol headers (v1 and v2): for clients, and for tests of a ``proxy:`` listener.

The parser is :mod:`sockproto.core.proxy`; the bytes built here are exactly what it accepts.

Plain Python: no Twisted import (the sans-IO rule).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

from .proxy import UNIX_SIZE, V2_SIGNATURE, Address, Command, crc32c

__all__ = ["encode_v1", "encode_v2"]

_CRC_PLACEHOLDER: Final = b"\x03\x00\x04\x00\x00\x00\x00"  # a CRC32C TLV before its value is known


def encode_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """A v1 line: ``PROXY TCP4|TCP6 src dst sport dport`` or, without addresses, ``PROXY UNKNOWN``.

    :raises ValueError: for a bad address or port, or addresses of two families.
    """
    if source is None or destination is None:
        if source is not destination:
            raise ValueError("give both addresses or neither")
        return b"PROXY UNKNOWN\r\n"
    (src, sport), (dst, dport) = _ip(source), _ip(destination)
    if src.version != dst.version:
        raise ValueError(f"source {src} and destination {dst} are not of the same IP version")
    return f"PROXY TCP{src.version} {src} {dst} {sport} {dport}\r\n".encode("ascii")


def encode_v2(
    source: Address,
    destination: Address,
    command: Command = "PROXY",
    tlvs: Iterable[tuple[int, bytes]] = (),
    *,
    datagram: bool = False,
    checksum: bool = False,
) -> bytes:
    """A v2 header.

    :param source: ``(host, port)`` (IPv4 or IPv6), a UNIX path, or ``None`` (with
        ``destination`` ``None`` too: family UNSPEC; always so for LOCAL).
    :param command: ``"PROXY"`` or ``"LOCAL"`` (a LOCAL header carries no address).
    :param tlvs: ``(type, value)`` extensions, written in order.
    :param datagram: say UDP (or UNIX datagram) rather than TCP (or UNIX stream).
    :param checksum: end with a CRC32C TLV covering the header.
    :raises ValueError: for bad addresses, or a header longer than 16 + 65535 bytes.
    """
    if (source is None) != (destination is None):
        raise ValueError("give both addresses or neither")
    if command not in ("PROXY", "LOCAL"):
        raise ValueError(f"command must be 'PROXY' or 'LOCAL', not {command!r}")
    if command == "LOCAL" and source is not None:
        raise ValueError("a LOCAL header carries no addresses")
    if source is None or destination is None:
        family, addresses = 0x00, b""
    elif isinstance(source, str) and isinstance(destination, str):
        family, addresses = 0x31, _unix_raw(source) + _unix_raw(destination)
    elif isinstance(source, tuple) and isinstance(destination, tuple):
        (src, sport), (dst, dport) = _ip(source), _ip(destination)
        if src.version != dst.version:
            raise ValueError(f"source {src} and destination {dst} are not of the same IP version")
        family = 0x11 if src.version == 4 else 0x21
        addresses = src.packed + dst.packed + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    else:
        raise ValueError("source and destination must both be (host, port) or both UNIX paths")
    if datagram and family:
        family += 1
    extensions = b"".join(_tlv(kind, value) for kind, value in tlvs)
    if checksum:
        extensions += _CRC_PLACEHOLDER
    length = len(addresses) + len(extensions)
    if length > 0xFFFF:
        raise ValueError(f"a v2 header holds at most 65535 bytes after its first 16, not {length}")
    cmd = 0x21 if command == "PROXY" else 0x20
    header = V2_SIGNATURE + bytes((cmd, family)) + length.to_bytes(2, "big") + addresses + extensions
    if checksum:
        header = header[:-4] + crc32c(header).to_bytes(4, "big")
    return header


def _ip(address: tuple[str, int]) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, port = address
    ip = ipaddress.ip_address(host)
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} is not between 0 and 65535")
    return ip, port


def _unix_raw(path: str) -> bytes:
    raw = path.encode("utf-8", "surrogateescape")
    if len(raw) > UNIX_SIZE:
        raise ValueError(f"a UNIX path holds at most {UNIX_SIZE} bytes, not {len(raw)}")
    return raw.ljust(UNIX_SIZE, b"\0")


def _tlv(kind: int, value: bytes) -> bytes:
    if not 0 <= kind <= 0xFF or len(value) > 0xFFFF:
        raise ValueError(f"a TLV has a type from 0 to 255 and at most 65535 bytes, not {kind}, {len(value)}")
    return bytes((kind,)) + len(value).to_bytes(2, "big") + value

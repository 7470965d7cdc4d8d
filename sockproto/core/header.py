"""Declarative fixed-size binary headers whose length field announces the payload.

A :class:`HeaderSpec` names the fields of a :mod:`struct` layout, says which one is
the payload length and how the wire value relates to the payload size, and fixes the
value of constant fields (a magic number, a version).  Fields named ``kind`` and
``id`` give frames request kinds and request ids.  The presets cover the SPF/1 header
and the bare length prefixes of Twisted's ``Int32StringReceiver``, Netty's
``LengthFieldPrepender`` and Tokio's ``LengthDelimitedCodec``.

Plain Python: no Twisted import (the sans-IO rule).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Mapping
from operator import itemgetter
from typing import Final, Literal

__all__ = [
    "INT16",
    "INT32",
    "INT32LE",
    "PRESETS",
    "SPF1",
    "FieldValue",
    "HeaderSpec",
    "PayloadTooLarge",
    "PayloadTooShort",
    "SpecError",
]

FieldValue = int | bytes
"""The value of one header field: an integer, or bytes for an ``Ns`` field."""

_INT_CODES: Final = "bBhHiIqQ"
_UNSIGNED_CODES: Final = "BHIQ"
_FIELD_RE: Final = re.compile(r"(\d*)([bBhHiIqQs])\Z")
_ORDERS: Final = {"big": ">", "network": ">", "little": "<"}


class SpecError(ValueError):
    """A header specification is inconsistent (raised when it is declared)."""


class PayloadTooShort(ValueError):
    """The payload is shorter than a negative ``length_adjustment`` takes off: the
    length field would be negative."""


class PayloadTooLarge(ValueError):
    """A payload is longer than the header's length field can announce."""


class HeaderSpec:
    """The layout of a fixed-size frame header.

    :param name: a short name, used in messages and by ``--header``.
    :param fields: ``(name, struct code)`` pairs in wire order, or the same as one
        string ``"magic:2s version:B length:I"``.  Codes are :mod:`struct` codes
        without byte-order prefix: ``b B h H i I q Q`` or ``Ns``.
    :param byte_order: ``"big"`` (also ``"network"``) or ``"little"``.
    :param length: the field holding the payload length (an unsigned integer).
    :param length_includes_header: the wire length counts the header bytes too.
    :param length_adjustment: a fixed number added to the payload length on the
        wire, on top of the header size when ``length_includes_header``.
    :param constants: fields whose value is fixed; any other value makes the header
        invalid (a protocol error, since a stream cannot resynchronise).
    :raises SpecError: if the declaration is inconsistent.
    """

    def __init__(
        self,
        name: str,
        fields: str | Iterable[tuple[str, str]],
        *,
        byte_order: Literal["big", "network", "little"] = "big",
        length: str = "length",
        length_includes_header: bool = False,
        length_adjustment: int = 0,
        constants: Mapping[str, FieldValue] | None = None,
    ) -> None:
        pairs = _parse_fields(fields)
        if byte_order not in _ORDERS:
            raise SpecError(f"byte_order must be 'big' or 'little', not {byte_order!r}")
        names = tuple(n for n, _ in pairs)
        codes = dict(pairs)
        if length not in codes or codes[length] not in _UNSIGNED_CODES:
            raise SpecError(f"{name}: length field {length!r} must be an unsigned integer field")
        for role in ("kind", "id"):
            if role in codes and codes[role] not in _INT_CODES:
                raise SpecError(f"{name}: field {role!r} must be an integer field")
        constants = dict(constants or {})
        for cname, value in constants.items():
            if cname not in codes or cname in (length, "kind", "id"):
                raise SpecError(f"{name}: constant {cname!r} is not a plain field of the header")
            try:
                _check_value(name, cname, codes[cname], value, byte_order)
            except ValueError as e:
                raise SpecError(str(e)) from None
        self.name: Final = name
        self.names: Final = names
        self.struct: Final = struct.Struct(_ORDERS[byte_order] + "".join(c for _, c in pairs))
        self.size: Final = self.struct.size
        self.byte_order: Final = byte_order
        self.length_field: Final = length
        self.constants: Final[Mapping[str, FieldValue]] = constants
        self.length_index: Final = names.index(length)
        self.kind_index: Final = names.index("kind") if "kind" in codes else -1
        self.id_index: Final = names.index("id") if "id" in codes else -1
        #: wire length = payload length + this offset
        self.length_offset: Final = length_adjustment + (self.size if length_includes_header else 0)
        self._adjustment = length_adjustment
        wire_max = _int_range(codes[length])[1]
        #: the longest payload the length field can announce
        self.max_payload: Final = wire_max - self.length_offset
        if self.max_payload < 0:
            raise SpecError(f"{name}: the length adjustment leaves no room for a payload")
        #: the shortest payload the length field can announce: above zero only with a
        #: negative adjustment (the field counts fewer bytes than follow it)
        self.min_payload: Final = max(0, -self.length_offset)
        self._codes = codes
        self._defaults = tuple(
            constants.get(n, b"\0" * _bytes_width(c) if c.endswith("s") else 0) for n, c in pairs
        )
        #: ``(field, byte offset, wire bytes)`` of each constant field, in wire order
        self.constant_fields: Final = _constant_fields(self.struct.format, names, constants)
        const_idx = tuple(names.index(n) for n in constants)
        const_vals = tuple(constants.values())
        #: ``constant_getter(values) == constant_value`` when the constants are right
        #: (the decoder's hot-path check); ``None`` without constant fields
        self.constant_getter: Final = itemgetter(*const_idx) if const_idx else None
        self.constant_value: Final = const_vals if len(const_vals) > 1 else (const_vals or (None,))[0]
        self.pack_frame_header: Final = self._make_packer()
        bare = names == (length,) and not self.length_offset
        #: for a bare length prefix (``INT32``...), ``pack_bare(n)`` is the header of an
        #: ``n``-byte payload in one C call; ``None`` for any other header
        self.pack_bare: Final = self.struct.pack if bare else None

    @property
    def has_kind(self) -> bool:
        """Whether frames carry a request kind."""
        return self.kind_index >= 0

    @property
    def has_id(self) -> bool:
        """Whether frames carry a request id (answers may then come out of order)."""
        return self.id_index >= 0

    def __repr__(self) -> str:
        return f"<HeaderSpec {self.name} {self.struct.format!r} size={self.size}>"

    def pack_header(self, length: int, /, **fields: FieldValue) -> bytes:
        """Return the header announcing a payload of ``length`` bytes.

        Constant fields take their fixed value, unnamed ones zero.

        :raises PayloadTooLarge: if the length field cannot represent ``length``.
        :raises PayloadTooShort: if ``length`` is under :attr:`min_payload`.
        :raises ValueError: for an unknown field or a value that does not fit.
        """
        if not self.min_payload <= length <= self.max_payload:
            if not 0 <= length <= self.max_payload:
                raise PayloadTooLarge(
                    f"{self.name}: a {length}-byte payload does not fit the length field "
                    f"(at most {self.max_payload} bytes)"
                )
            raise self._too_short(length)
        values = list(self._defaults)
        for fname, value in fields.items():
            if fname not in self._codes or fname == self.length_field:
                raise ValueError(f"{self.name}: no settable header field {fname!r}")
            _check_value(self.name, fname, self._codes[fname], value, self.byte_order)
            values[self.names.index(fname)] = value
        values[self.length_index] = length + self.length_offset
        return self.struct.pack(*values)

    def encode(self, payload: bytes, **fields: FieldValue) -> bytes:
        """Return one whole frame: the header for ``payload`` followed by it."""
        return self.pack_header(len(payload), **fields) + payload

    def unpack(self, header: bytes) -> dict[str, FieldValue]:
        """Decode exactly one header into a field-name mapping (no validation)."""
        return dict(zip(self.names, self.struct.unpack(header), strict=True))

    def check(self, values: tuple[FieldValue, ...]) -> str | None:
        """Say why decoded header ``values`` cannot be valid, or ``None`` if they can."""
        for fname, _, _ in self.constant_fields:
            if values[self.names.index(fname)] != self.constants[fname]:
                return self._bad_constant(fname)
        wire = values[self.length_index]
        assert isinstance(wire, int)
        if wire < self.length_offset:
            return (
                f"{self.name}: length field {self.length_field!r} is {wire}, less than the "
                f"{self.length_offset} it adds to every payload (length_adjustment"
                f"{' and the header it includes' if self.length_offset != self._adjustment else ''})"
            )
        return None

    def _raise_too_short(self, length: int) -> bytes:
        raise self._too_short(length)

    def _too_short(self, length: int) -> PayloadTooShort:
        return PayloadTooShort(
            f"{self.name}: a {length}-byte payload is shorter than the length adjustment allows: "
            f"length field {self.length_field!r} would be {length + self.length_offset} "
            f"(at least {self.min_payload} bytes of payload)"
        )

    def check_start(self, start: bytes) -> str | None:
        """Say why the first bytes of a header cannot be valid, or ``None`` if they can.

        Only the constant fields are checked, as far as ``start`` reaches; the reason is
        the one :meth:`check` gives for the whole header, whatever the length of ``start``.
        """
        for fname, offset, raw in self.constant_fields:
            got = start[offset : offset + len(raw)]
            if got and not raw.startswith(got):
                return self._bad_constant(fname)
        return None

    def _bad_constant(self, fname: str) -> str:
        return f"{self.name}: bad {fname}, expected {self.constants[fname]!r}"

    def _make_packer(self) -> Callable[[int, int | None, int], bytes]:
        """Build ``pack_frame_header(kind, id, payload_length)``, the hot-path encoder.

        Constants are bound once; kind and id are ignored when the header has none.
        The caller checks ``payload_length <= max_payload``; a payload under
        :attr:`min_payload` raises :class:`PayloadTooShort` (only a header with a
        negative adjustment pays for that check).
        """
        args: list[str] = []
        env: dict[str, object] = {"_pack": self.struct.pack}
        for i in range(len(self.names)):
            if i == self.length_index:
                args.append(f"n + {self.length_offset}" if self.length_offset else "n")
            elif i == self.kind_index:
                args.append("kind")
            elif i == self.id_index:
                args.append("id")
            else:
                env[f"_c{i}"] = self._defaults[i]
                args.append(f"_c{i}")
        src = f"lambda kind, id, n: _pack({', '.join(args)})"
        if self.min_payload:
            env["_min"], env["_short"] = self.min_payload, self._raise_too_short
            src = f"lambda kind, id, n: _pack({', '.join(args)}) if n >= _min else _short(n)"
        packer: Callable[[int, int | None, int], bytes] = eval(src, env)  # noqa: S307 (our own names)
        return packer


def _parse_fields(fields: str | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    if isinstance(fields, str):
        pairs = []
        for item in fields.split():
            fname, sep, code = item.partition(":")
            if not sep:
                raise SpecError(f"field {item!r} is not of the form name:code")
            pairs.append((fname, code))
    else:
        pairs = [(str(n), str(c)) for n, c in fields]
    if not pairs:
        raise SpecError("a header needs at least its length field")
    seen: set[str] = set()
    for fname, code in pairs:
        if not fname.isidentifier():
            raise SpecError(f"field name {fname!r} is not an identifier")
        if fname in seen:
            raise SpecError(f"field {fname!r} is declared twice")
        seen.add(fname)
        match = _FIELD_RE.match(code)
        if match is None or (match.group(1) and match.group(2) != "s"):
            raise SpecError(f"field {fname!r}: unsupported struct code {code!r}")
    return pairs


def _bytes_width(code: str) -> int:
    return int(code[:-1] or "1")


def _int_range(code: str) -> tuple[int, int]:
    bits = struct.calcsize(code) * 8
    if code in _UNSIGNED_CODES:
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _check_value(spec: str, fname: str, code: str, value: object, order: str) -> None:
    if code.endswith("s"):
        if not isinstance(value, bytes) or len(value) != _bytes_width(code):
            raise ValueError(f"{spec}: field {fname!r} takes {_bytes_width(code)} bytes, not {value!r}")
        return
    low, high = _int_range(code)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{spec}: field {fname!r} takes an integer in [{low}, {high}], not {value!r}")


def _constant_fields(
    fmt: str, names: tuple[str, ...], constants: Mapping[str, FieldValue]
) -> tuple[tuple[str, int, bytes], ...]:
    """Return ``(field, offset, wire bytes)`` for each constant field, in wire order."""
    order, codes = fmt[0], _split_codes(fmt[1:])
    found: list[tuple[str, int, bytes]] = []
    offset = 0
    for fname, code in zip(names, codes, strict=True):
        if fname in constants:
            found.append((fname, offset, struct.pack(order + code, constants[fname])))
        offset += struct.calcsize(order + code)
    return tuple(found)


def _split_codes(codes: str) -> list[str]:
    return [m.group(0) for m in re.finditer(r"\d*[bBhHiIqQs]", codes)]


SPF1: Final = HeaderSpec(
    "spf1",
    "magic:2s version:B kind:B id:I length:I",
    constants={"magic": b"SP", "version": 1},
)
"""SPF/1: ``b"SP"``, version 1, kind, request id, payload length (12 bytes, big-endian)."""

INT32: Final = HeaderSpec("int32", "length:I")
"""A bare 4-byte big-endian length (Twisted ``Int32StringReceiver``, Netty, Tokio)."""

INT16: Final = HeaderSpec("int16", "length:H")
"""A bare 2-byte big-endian length (Twisted ``Int16StringReceiver``)."""

INT32LE: Final = HeaderSpec("int32le", "length:I", byte_order="little")
"""A bare 4-byte little-endian length."""

PRESETS: Final[Mapping[str, HeaderSpec]] = {s.name: s for s in (SPF1, INT32, INT16, INT32LE)}
"""The presets by the name ``--header`` takes."""

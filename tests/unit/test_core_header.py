"""The declarative header spec and its presets."""

from __future__ import annotations

import ast
import struct
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from sockproto.core import INT16, INT32, INT32LE, PRESETS, SPF1, HeaderSpec, PayloadTooLarge, SpecError
from sockproto.core.header import PayloadTooShort

CORE = Path(__file__).resolve().parents[2] / "sockproto" / "core"


class SansIOTests(SynchronousTestCase):
    """The core never imports Twisted."""

    def test_no_twisted_import_in_source(self) -> None:
        offenders = []
        for path in sorted(CORE.glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                elif isinstance(node, ast.ImportFrom) and node.level > 1:
                    names = [f"{'.' * node.level}{node.module or ''} (outside the core)"]
                offenders += [
                    f"{path.name}: {n}"
                    for n in names
                    if n.startswith("..") or n.split(".")[0] in ("twisted", "zope")
                ]
        self.assertEqual(offenders, [])
        self.assertGreater(len(list(CORE.glob("*.py"))), 3)

    def test_importing_core_loads_no_twisted(self) -> None:
        modules = sorted(f"sockproto.core.{p.stem}" for p in CORE.glob("*.py") if p.stem != "__init__")
        self.assertIn("sockproto.core.datagram", modules)
        code = (
            f"import sys, sockproto.core, {', '.join(modules)}\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope'))\n"
            "print(bad)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=CORE.parents[1]
        )
        self.assertEqual(out.stdout.strip(), "[]")


class PresetTests(SynchronousTestCase):
    def test_spf1_layout(self) -> None:
        self.assertEqual(SPF1.size, 12)
        frame = SPF1.encode(b"hello", kind=1, id=7)
        self.assertEqual(frame.hex(" "), "53 50 01 01 00 00 00 07 00 00 00 05 68 65 6c 6c 6f")
        self.assertTrue(SPF1.has_kind and SPF1.has_id)
        self.assertEqual(SPF1.max_payload, 2**32 - 1)

    def test_bare_prefixes_match_struct(self) -> None:
        self.assertEqual(INT32.encode(b"abc"), struct.pack("!I", 3) + b"abc")
        self.assertEqual(INT16.encode(b"abc"), struct.pack("!H", 3) + b"abc")
        self.assertEqual(INT32LE.encode(b"abc"), struct.pack("<I", 3) + b"abc")
        for spec in (INT32, INT16, INT32LE):
            self.assertFalse(spec.has_kind or spec.has_id)
        self.assertEqual(INT16.max_payload, 65535)
        self.assertEqual(set(PRESETS), {"spf1", "int32", "int16", "int32le"})

    def test_fast_packer_agrees_with_pack_header(self) -> None:
        self.assertEqual(SPF1.pack_frame_header(2, 99, 5), SPF1.pack_header(5, kind=2, id=99))
        self.assertEqual(INT32.pack_frame_header(2, 99, 5), INT32.pack_header(5))

    def test_unpack(self) -> None:
        fields = SPF1.unpack(SPF1.pack_header(3, kind=4, id=8))
        self.assertEqual(fields, {"magic": b"SP", "version": 1, "kind": 4, "id": 8, "length": 3})


class CustomSpecTests(SynchronousTestCase):
    def test_legacy_header_in_one_expression(self) -> None:
        legacy = HeaderSpec(
            "legacy",
            "magic:4s flags:H length:I",
            constants={"magic": b"LGCY"},
            length_includes_header=True,
            byte_order="little",
        )
        self.assertEqual(legacy.size, 10)
        frame = legacy.encode(b"hi", flags=3)
        self.assertEqual(frame, b"LGCY" + struct.pack("<HI", 3, 12) + b"hi")
        self.assertEqual(legacy.max_payload, 2**32 - 1 - 10)
        self.assertEqual(legacy.constant_fields, (("magic", 0, b"LGCY"),))

    def test_length_adjustment(self) -> None:
        spec = HeaderSpec("adj", [("length", "H")], length_adjustment=2)
        self.assertEqual(spec.encode(b"x"), b"\x00\x03x")
        self.assertEqual(spec.max_payload, 65533)

    def test_field_pairs_form(self) -> None:
        spec = HeaderSpec("pairs", [("kind", "B"), ("length", "I")])
        self.assertTrue(spec.has_kind)
        self.assertFalse(spec.has_id)

    def test_constant_fields_in_wire_order(self) -> None:
        spec = HeaderSpec("runs", "a:B b:H c:B length:I d:2s", constants={"d": b"ZZ", "a": 1, "b": 2})
        self.assertEqual(spec.constant_fields, (("a", 0, b"\x01"), ("b", 1, b"\x00\x02"), ("d", 8, b"ZZ")))
        self.assertEqual(spec.check_start(b"\x01\x00"), None)
        self.assertEqual(spec.check_start(b"\x01\x01"), "runs: bad b, expected 2")
        self.assertEqual(spec.check_start(b"\x01\x00\x02\x00" + bytes(4) + b"Z"), None)
        self.assertEqual(
            spec.check_start(b"\x01\x00\x02\x00" + bytes(4) + b"Y"), "runs: bad d, expected b'ZZ'"
        )

    def test_check_reports_bad_constants(self) -> None:
        values = SPF1.struct.unpack(b"XP\x01\x01" + bytes(8))
        self.assertIn("magic", SPF1.check(values) or "")
        self.assertIsNone(SPF1.check(SPF1.struct.unpack(SPF1.pack_header(0, kind=1))))

    def test_inconsistent_specs_are_refused(self) -> None:
        bad = [
            lambda: HeaderSpec("x", "kind:B"),  # no length field
            lambda: HeaderSpec("x", "length:i"),  # signed length
            lambda: HeaderSpec("x", "length:I length:H"),  # duplicate
            lambda: HeaderSpec("x", "len-gth:I", length="len-gth"),  # not an identifier
            lambda: HeaderSpec("x", "length:f"),  # unsupported code
            lambda: HeaderSpec("x", "length"),  # no code
            lambda: HeaderSpec("x", ""),  # empty
            lambda: HeaderSpec("x", "kind:2s length:I"),  # kind must be an integer
            lambda: HeaderSpec("x", "m:2s length:I", constants={"m": b"abc"}),  # wrong width
            lambda: HeaderSpec("x", "v:B length:I", constants={"v": 300}),  # out of range
            lambda: HeaderSpec("x", "length:I", constants={"length": 3}),  # length is no constant
            lambda: HeaderSpec("x", "length:I", constants={"nope": 3}),  # unknown field
            lambda: HeaderSpec("x", "length:B", length_adjustment=300),  # no room left
            lambda: HeaderSpec("x", "length:I", byte_order="middle"),  # type: ignore[arg-type]
        ]
        for make in bad:
            self.assertRaises(SpecError, make)

    def test_encoder_refuses_unrepresentable_payloads(self) -> None:
        self.assertRaises(PayloadTooLarge, INT16.encode, b"x" * 65536)
        self.assertEqual(len(INT16.encode(b"x" * 65535)), 65537)
        self.assertRaises(PayloadTooLarge, INT16.pack_header, -1)

    def test_encoder_refuses_bad_fields(self) -> None:
        self.assertRaises(ValueError, SPF1.pack_header, 1, kind=256)
        self.assertRaises(ValueError, SPF1.pack_header, 1, id=-1)
        self.assertRaises(ValueError, SPF1.pack_header, 1, nope=1)
        self.assertRaises(ValueError, SPF1.pack_header, 1, length=1)
        self.assertRaises(ValueError, SPF1.pack_header, 1, magic=b"X")


class LengthAdjustmentBoundsTests(SynchronousTestCase):
    """A negative adjustment sets a shortest payload; a positive one a smallest length field (issue 12)."""

    def test_payload_shorter_than_a_negative_adjustment(self) -> None:
        spec = HeaderSpec("neg", "length:I", length_adjustment=-4)
        self.assertEqual(spec.min_payload, 4)
        for encode in (lambda: spec.encode(b"ab"), lambda: spec.pack_frame_header(0, None, 2)):
            error = self.assertRaises(PayloadTooShort, encode)
            self.assertIsInstance(error, ValueError)
            self.assertIn("'length'", str(error))
            self.assertIn("would be -2", str(error))
        self.assertEqual(spec.encode(b"abcd"), b"\0\0\0\0abcd")
        self.assertEqual(spec.pack_frame_header(0, None, 6), b"\0\0\0\x02")

    def test_every_negative_adjustment(self) -> None:
        for adjustment in (-1, -2, -12, -100):
            spec = HeaderSpec("neg", "length:I", length_adjustment=adjustment)
            shortest = -adjustment
            self.assertEqual(len(spec.encode(b"x" * shortest)), 4 + shortest)
            self.assertRaises(PayloadTooShort, spec.encode, b"x" * (shortest - 1))

    def test_no_adjustment_no_minimum(self) -> None:
        for spec in (SPF1, INT32, HeaderSpec("pos", "length:I", length_adjustment=4)):
            self.assertEqual(spec.min_payload, 0)
            self.assertEqual(spec.encode(b""), spec.pack_header(0))

"""sockproto.cli.main: argument parsing and checks; usage errors exit 2 before any I/O."""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from sockproto.cli.commands import Streams
from sockproto.cli.errors import Status
from sockproto.cli.main import build_parser, main, prepare


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def usage_error(*argv: str, stdin: bytes = b"") -> str:
    """Run ``main`` expecting status 2; return what it wrote to stderr."""
    err = io.StringIO()
    try:
        main(list(argv), stdin=io.BytesIO(stdin), stdout=io.BytesIO(), stderr=err)
    except SystemExit as e:
        assert e.code == Status.USAGE, (argv, e.code, err.getvalue())
    else:  # pragma: no cover
        raise AssertionError("main() returned")
    return err.getvalue()


class ParserTests(SynchronousTestCase):
    def parse(self, *argv: str) -> Any:
        return build_parser().parse_args(list(argv))

    def test_defaults(self) -> None:
        args = self.parse("frame", "127.0.0.1:8750")
        self.assertEqual((args.command, args.endpoint, args.header), ("frame", "127.0.0.1:8750", "spf1"))
        self.assertEqual((args.timeout, args.count, args.data, args.file), (10.0, 1, None, None))
        args = self.parse("bench", "127.0.0.1:8750")
        self.assertEqual(
            (args.service, args.requests, args.concurrency, args.size, args.json),
            ("frame", 1000, 8, 100, False),
        )

    def test_units(self) -> None:
        args = self.parse("halfclose", "h:1", "--timeout", "500ms", "--count", "3")
        self.assertEqual((args.timeout, args.count), (0.5, 3))
        self.assertEqual(self.parse("bench", "h:1", "--size", "4KiB").size, 4096)

    def test_bad_values_are_one_line_usage_errors(self) -> None:
        cases = [
            (("frame",), "required: ENDPOINT"),
            (("frame", "h:1", "--timeout", "soon"), "expected a positive number of seconds"),
            (("frame", "h:1", "--count", "0"), "expected a whole number of at least 1"),
            (("frame", "h:1", "--header", "xml"), "invalid choice: 'xml'"),
            (("frame", "h:1", "--data", "a", "--file", "b"), "not allowed with argument"),
            (("bench", "h:1", "--size", "huge"), "expected a size like"),
            (("bench", "h:1", "--service", "smtp"), "invalid choice"),
            (("teleport",), "invalid choice"),
            ((), "required: COMMAND"),
        ]
        for argv, expected in cases:
            message = usage_error(*argv)
            self.assertIn(expected, message, argv)
            self.assertEqual(message.count("\n"), 1, message)
            self.assertIn("--help", message)


class PrepareTests(SynchronousTestCase):
    def temporary_file(self) -> Path:
        """A file in a temporary directory removed after the test (trial's mktemp is cwd-relative)."""
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, directory)
        return directory / "payload"

    def prepare(self, *argv: str, stdin: bytes = b"", err: io.StringIO | None = None) -> Any:
        args = build_parser().parse_args(list(argv))
        streams = Streams(io.BytesIO(), err or io.StringIO())
        return prepare(args, MemoryReactorClock(), io.BytesIO(stdin), streams)

    def test_usage_errors_found_before_connecting(self) -> None:
        cases = [
            (("frame", "udp:host=h:port=1"), "is for the datagram service"),
            (("halfclose", "udp:host=h:port=1"), "is for the datagram service"),
            (("bench", "udp:host=h:port=1"), "is for the datagram service"),
            (("bench", "tcp:host=h:port=1", "--service", "datagram"), "the datagram service takes udp:"),
            (("datagram", "tcp:host=h:port=1"), "the datagram service takes udp:"),
            (("datagram", "h:1", "--data", "x" * 65496), "limit"),
            (("frame", "h:1", "--header", "int16"), "limit"),
            (("bench", "h:1", "--service", "halfclose", "--header", "spf1"), "no header"),
            (("bench", "h:1", "--service", "datagram", "--header", "int32"), "spf1 or raw"),
            (("bench", "h:1", "--service", "datagram", "--size", "64KiB"), "--size"),
            (("bench", "h:1", "--header", "nope"), "expected one of"),
            (("frame", "h:1", "--file", "/nonexistent/payload"), "No such file"),
            (("frame", "nowhere"), "expected HOST:PORT"),
        ]
        for argv, expected in cases:
            with self.assertRaises(ValueError, msg=argv) as info:
                self.prepare(*argv, stdin=b"y" * 70000)
            self.assertIn(expected, str(info.exception), argv)

    def test_usage_error_from_main_is_one_line(self) -> None:
        message = usage_error("datagram", "tcp:host=h:port=1", "--data", "x")
        self.assertTrue(message.startswith("sockproto datagram: "), message)
        self.assertEqual(message.count("\n"), 1)

    def test_payload_from_data_file_or_stdin(self) -> None:
        self.assertIsNotNone(self.prepare("frame", "h:1", "--data", "text"))
        path = self.temporary_file()
        path.write_bytes(b"\x00\xff")
        self.assertIsNotNone(self.prepare("halfclose", "h:1", "--file", str(path)))
        self.assertIsNotNone(self.prepare("datagram", "h:1", stdin=b"from stdin"))

    def test_payload_reading(self) -> None:
        from sockproto.cli.main import read_payload

        parser = build_parser()
        path = self.temporary_file()
        path.write_bytes(b"file bytes")
        cases = [
            (["frame", "h:1", "--data", "caf\u00e9"], b"", "caf\u00e9".encode()),
            (["frame", "h:1", "--file", str(path)], b"", b"file bytes"),
            (["frame", "h:1"], b"stdin bytes", b"stdin bytes"),
            (["ping", "h:1"], b"not read", b""),
        ]
        for argv, stdin, expected in cases:
            args = parser.parse_args(argv)
            self.assertEqual(read_payload(args, io.BytesIO(stdin), 100), expected, argv)
        args = parser.parse_args(["frame", "h:1"])
        self.assertRaises(ValueError, read_payload, args, io.BytesIO(b"x" * 101), 100)

    def test_bench_progress_bar_only_on_a_terminal(self) -> None:
        # The progress bar is chosen when the job is prepared: check both ways.
        self.assertIsNotNone(self.prepare("bench", "h:1", err=TTY()))
        self.assertIsNotNone(self.prepare("bench", "h:1", err=io.StringIO()))

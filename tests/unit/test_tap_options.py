"""twistd options: defaults, parsing, and usage errors that name the option."""

from __future__ import annotations

from twisted.application.service import IServiceCollection
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core import INT16, SPF1, parse_duration, parse_size
from sockproto.handlers import echo, resolve_handler, sha256
from sockproto.request import Request
from sockproto.serving.service import ListeningService
from sockproto.tap import combined, frame


def parse(*args: str) -> frame.Options:
    options = frame.Options()
    options.parseOptions(list(args))
    return options


class FrameOptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        o = parse()
        self.assertEqual(o["listen"], ["tcp:8750:interface=127.0.0.1"])
        self.assertIs(o["handler"], echo)
        self.assertIs(o["header"], SPF1)
        self.assertEqual(o["max-payload"], 16 * 2**20)
        self.assertEqual(o["max-in-flight"], 64)

    def test_values(self) -> None:
        o = parse(
            "--listen", "tcp:9000", "--listen", "unix:/tmp/x.sock", "--handler", "sha256",
            "--header", "INT16", "--max-payload", "64KiB", "--max-in-flight", "3",
        )  # fmt: skip
        self.assertEqual(o["listen"], ["tcp:9000", "unix:/tmp/x.sock"])
        self.assertIs(o["handler"], sha256)
        self.assertIs(o["header"], INT16)
        self.assertEqual(o["max-payload"], 65536)
        self.assertEqual(o["max-in-flight"], 3)

    def test_sizes(self) -> None:
        for text, value in [("65536", 65536), ("64KiB", 65536), ("16MiB", 16 * 2**20), ("1kb", 1000)]:
            self.assertEqual(parse("--max-payload", text)["max-payload"], value)

    def test_usage_errors_name_the_option(self) -> None:
        cases = [
            (["--max-payload", "lots"], "--max-payload"),
            (["--max-payload", "-5"], "--max-payload"),
            (["--max-in-flight", "0"], "--max-in-flight"),
            (["--max-in-flight", "many"], "--max-in-flight"),
            (["--header", "int64"], "--header"),
            (["--handler", "nope"], "--handler"),
            (["--handler", "no_such_module_xyz:f"], "--handler"),
            (["--handler", "sockproto.handlers:missing"], "--handler"),
            (["--listen", "bogus:1234"], "--listen"),
            (["--listen", "tcp:notaport"], "--listen"),
            (["--listen", "tcp6:0:interface=::1"], "escape"),
        ]
        for args, name in cases:
            with self.assertRaises(UsageError, msg=args) as ctx:
                parse(*args)
            self.assertIn(name, str(ctx.exception), args)

    def test_make_service_listens_on_each_endpoint(self) -> None:
        service = frame.makeService(parse("--listen", "tcp:0", "--listen", r"tcp6:0:interface=\:\:1"))
        children = list(IServiceCollection(service))
        self.assertEqual(len(children), 2)
        for child in children:
            self.assertIsInstance(child, ListeningService)
            self.assertFalse(child.running)

    def test_combined_runs_every_service_on_defaults(self) -> None:
        options = combined.Options()
        options.parseOptions([])
        service = combined.makeService(options)
        names = [child.name for child in IServiceCollection(service)]
        self.assertEqual(names, [m.rsplit(".", 1)[-1] for m in combined.SERVICES])


class HandlerLookupTests(SynchronousTestCase):
    def test_builtins_and_dotted_paths(self) -> None:
        self.assertIs(resolve_handler("echo"), echo)
        self.assertIs(resolve_handler("sockproto.handlers:sha256"), sha256)

    def test_not_callable(self) -> None:
        self.assertRaises(ValueError, resolve_handler, "sockproto.handlers:BUILTINS")

    def test_sha256(self) -> None:
        answer = sha256(Request.bare(b"", None))
        self.assertEqual(answer, b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n")


class UnitParsingTests(SynchronousTestCase):
    def test_sizes(self) -> None:
        self.assertEqual(parse_size("0"), 0)
        self.assertEqual(parse_size(" 2 GiB "), 2 * 2**30)
        self.assertEqual(parse_size("3M"), 3 * 2**20)
        for bad in ("", "1.5MiB", "12 parsecs", "-1", "0x10"):
            self.assertRaises(ValueError, parse_size, bad)

    def test_durations(self) -> None:
        self.assertEqual(parse_duration("30"), 30.0)
        self.assertEqual(parse_duration("2.5s"), 2.5)
        self.assertAlmostEqual(parse_duration("500ms"), 0.5)
        for bad in ("", "0", "-1", "soon", "inf", "nan"):
            self.assertRaises(ValueError, parse_duration, bad)

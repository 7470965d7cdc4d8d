"""The twistd options of issue 8: defaults, values, usage errors naming the option, the service built."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IServiceCollection
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from sockproto.datagram.server import DatagramServerFactory
from sockproto.frame.server import FrameServerFactory
from sockproto.halfclose.server import HalfCloseServerFactory
from sockproto.handlers import sha256
from sockproto.serving import prometheus
from sockproto.serving.service import ListeningService, ServerService
from sockproto.serving.threads import ThreadedHandler
from sockproto.tap import datagram, frame, halfclose
from sockproto.tap.options import optional, parse_count, parse_non_negative_duration

MODULES = (frame, datagram, halfclose)


def parse(module: Any, *args: str) -> Any:
    options = module.Options()
    options.parseOptions(list(args))
    return options


class DefaultTests(SynchronousTestCase):
    def test_common_defaults(self) -> None:
        for module in MODULES:
            o = parse(module)
            self.assertEqual(
                (o["handler-timeout"], o["threads"], o["drain-timeout"]), (30.0, 0, 10.0), module
            )
            self.assertIsNone(o["metrics"])

    def test_service_defaults(self) -> None:
        self.assertEqual(parse(frame)["max-connections"], 1000)
        self.assertEqual(parse(frame)["idle-timeout"], 300.0)
        self.assertEqual(parse(halfclose)["max-connections"], 1000)
        o = parse(datagram)
        self.assertEqual((o["rate-limit"], o["amplification"]), (1000.0, 3))
        self.assertEqual(o["trusted"], ["127.0.0.0/8", "::1/128"])

    def test_frame_service_gets_the_settings(self) -> None:
        o = parse(
            frame, "--listen", "tcp:0", "--max-connections", "7", "--idle-timeout", "2.5",
            "--handler-timeout", "500ms", "--drain-timeout", "0",
        )  # fmt: skip
        service = frame.makeService(o)
        self.assertIsInstance(service, ServerService)
        assert isinstance(service, ServerService)
        factory = service.factory
        assert isinstance(factory, FrameServerFactory)
        self.assertEqual((factory.max_connections, factory.idle_timeout), (7, 2.5))
        self.assertEqual((factory.handler_timeout, service.drain_timeout), (0.5, 0.0))
        self.assertIsNone(service.threads)

    def test_none_lifts_a_limit(self) -> None:
        o = parse(frame, "--max-connections", "none", "--idle-timeout", "off", "--handler-timeout", "none")
        self.assertEqual((o["max-connections"], o["idle-timeout"], o["handler-timeout"]), (None, None, None))
        o = parse(datagram, "--rate-limit", "none", "--amplification", "none")
        factory = datagram.makeService(o).factory  # type: ignore[attr-defined]
        assert isinstance(factory, DatagramServerFactory)
        self.assertIsNone(factory.rate_limit)
        self.assertIsNone(factory.verifier)

    def test_datagram_service_gets_the_settings(self) -> None:
        o = parse(
            datagram, "--listen", "udp:0", "--rate-limit", "50", "--amplification", "5",
            "--trusted", "10.0.0.0/8", "--trusted", "fd00::/8",
        )  # fmt: skip
        factory = datagram.makeService(o).factory  # type: ignore[attr-defined]
        assert isinstance(factory, DatagramServerFactory)
        assert factory.rate_limit is not None and factory.verifier is not None
        self.assertEqual((factory.rate_limit.rate, factory.amplification), (50.0, 5))
        self.assertTrue(factory.verifier.is_verified("10.9.9.9"))
        self.assertFalse(factory.verifier.is_verified("127.0.0.1"))  # --trusted replaces loopback

    def test_threads_wrap_the_handler(self) -> None:
        service = halfclose.makeService(
            parse(halfclose, "--listen", "tcp:0", "--threads", "4", "--handler", "sha256")
        )
        assert isinstance(service, ServerService)
        factory = service.factory
        assert isinstance(factory, HalfCloseServerFactory)
        self.assertIsInstance(factory.handler, ThreadedHandler)
        assert isinstance(factory.handler, ThreadedHandler)
        self.assertIs(service.threads, factory.handler)
        self.assertEqual((factory.handler.threads, factory.handler.handler), (4, sha256))
        self.assertEqual(factory.handler.pool.max, 4)

    def test_metrics_adds_an_http_listener(self) -> None:
        service = frame.makeService(
            parse(frame, "--listen", "tcp:0", "--metrics", "tcp:0:interface=127.0.0.1")
        )
        children = list(IServiceCollection(service))
        self.assertEqual([c.kind for c in children if isinstance(c, ListeningService)], ["frame", "metrics"])


class UsageErrorTests(SynchronousTestCase):
    def assert_names(self, module: Any, args: list[str], needle: str) -> None:
        with self.assertRaises(UsageError, msg=args) as ctx:
            parse(module, *args)
        self.assertIn(needle, str(ctx.exception), args)

    def test_each_new_option(self) -> None:
        cases: list[tuple[Any, list[str], str]] = [
            (frame, ["--max-connections", "0"], "--max-connections"),
            (halfclose, ["--max-connections", "many"], "--max-connections"),
            (frame, ["--idle-timeout", "-1"], "--idle-timeout"),
            (frame, ["--handler-timeout", "soon"], "--handler-timeout"),
            (datagram, ["--handler-timeout", "0"], "--handler-timeout"),
            (halfclose, ["--threads", "-2"], "--threads"),
            (frame, ["--drain-timeout", "later"], "--drain-timeout"),
            (datagram, ["--rate-limit", "0"], "--rate-limit"),
            (datagram, ["--amplification", "0"], "--amplification"),
            (datagram, ["--trusted", "10.0.0.0/33"], "--trusted"),
            (frame, ["--metrics", "nosuch:1"], "--metrics"),
        ]
        for module, args, needle in cases:
            self.assert_names(module, args, needle)

    def test_none_is_suggested(self) -> None:
        self.assert_names(frame, ["--max-connections", "0"], "or none")

    def test_metrics_without_prometheus_client(self) -> None:
        self.patch(prometheus, "available", lambda: False)
        for module in MODULES:
            self.assert_names(module, ["--metrics", "tcp:9100"], "prometheus_client")


class ParserTests(SynchronousTestCase):
    def test_non_negative_durations(self) -> None:
        for text, value in [("0", 0.0), ("0s", 0.0), ("0ms", 0.0), ("2.5", 2.5), ("500ms", 0.5)]:
            self.assertEqual(parse_non_negative_duration(text), value)
        for bad in ("", "-1", "never", "nan"):
            self.assertRaises(ValueError, parse_non_negative_duration, bad)

    def test_optional(self) -> None:
        parse_limit = optional(parse_count)
        self.assertIsNone(parse_limit("None"))
        self.assertIsNone(parse_limit("unlimited"))
        self.assertEqual(parse_limit("3"), 3)

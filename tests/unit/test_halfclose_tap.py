"""``twistd sockproto-halfclose``: options, refused TLS endpoints, the service built."""

from __future__ import annotations

from twisted.application.service import IService, IServiceCollection, IServiceMaker
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, UNIXServerEndpoint
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from sockproto.halfclose.server import HalfCloseServerFactory
from sockproto.handlers import echo, sha256, sha256_stream
from sockproto.serving.service import ListeningService
from sockproto.tap import combined, halfclose


def parse(*args: str) -> halfclose.Options:
    options = halfclose.Options()
    options.parseOptions(list(args))
    return options


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        o = parse()
        self.assertEqual(o["listen"], ["tcp:8752:interface=127.0.0.1"])
        self.assertIs(o["handler"], echo)
        self.assertEqual(o["max-request"], 1024 * 1024)
        self.assertEqual(o["request-timeout"], 30.0)

    def test_values(self) -> None:
        o = parse(
            "--listen", "tcp:9000", "--listen", r"tcp6:9001:interface=\:\:1", "--listen", "unix:/tmp/h.sock",
            "--handler", "sha256", "--max-request", "64KiB", "--request-timeout", "500ms",
        )  # fmt: skip
        self.assertEqual(o["listen"], ["tcp:9000", r"tcp6:9001:interface=\:\:1", "unix:/tmp/h.sock"])
        kinds = [type(endpoint) for _, endpoint in o["endpoints"]]
        self.assertEqual(kinds, [TCP4ServerEndpoint, TCP6ServerEndpoint, UNIXServerEndpoint])
        self.assertIs(o["handler"], sha256)
        self.assertEqual(o["max-request"], 65536)
        self.assertEqual(o["request-timeout"], 0.5)

    def test_bad_values_name_the_option(self) -> None:
        for args, option in [
            (["--max-request", "lots"], "--max-request"),
            (["--request-timeout", "0"], "--request-timeout"),
            (["--request-timeout", "soon"], "--request-timeout"),
            (["--handler", "nope"], "--handler"),
            (["--listen", "bogus:1"], "--listen"),
        ]:
            with self.subTest(args=args):
                error = self.assertRaises(UsageError, parse, *args)
                self.assertIn(option, str(error))

    def test_tls_endpoints_refused_with_the_reason(self) -> None:
        for text in [
            "ssl:8443:privateKey=server.pem",
            "SSL:8443:privateKey=server.pem",
            "tls:8443",
            "ssl:8443",  # refused before the (missing) key file is even looked for
        ]:
            with self.subTest(endpoint=text):
                error = str(self.assertRaises(UsageError, parse, "--listen", "tcp:0", "--listen", text))
                self.assertIn(repr(text), error)
                self.assertIn("half-close", error)
                self.assertIn("twisted#5341", error)
                self.assertIn("tcp:, tcp6: or unix:", error)

    def test_haproxy_endpoints_refused_with_the_reason(self) -> None:
        for text in ["haproxy:tcp:8752", "HAProxy:unix:/tmp/s.sock", "haproxy:nonsense"]:
            with self.subTest(endpoint=text):
                error = str(self.assertRaises(UsageError, parse, "--listen", text))
                self.assertIn(repr(text), error)
                self.assertIn("ProtocolWrapper", error)
                self.assertIn("half-close ends the whole connection", error)
                self.assertIn("tcp:, tcp6: or unix:", error)


class ServiceTests(SynchronousTestCase):
    def test_make_service(self) -> None:
        o = parse(
            "--listen", "tcp:0:interface=127.0.0.1", "--listen", "unix:/tmp/h.sock",
            "--handler", "sha256", "--max-request", "1000", "--request-timeout", "2.5",
        )  # fmt: skip
        service = halfclose.makeService(o)
        children = list(IServiceCollection(service))
        self.assertEqual(len(children), 2)
        factories = set()
        for child, text in zip(children, o["listen"], strict=True):
            self.assertIsInstance(child, ListeningService)
            assert isinstance(child, ListeningService)
            self.assertEqual(child.description, text)
            factories.add(child.factory)
        [factory] = factories  # one factory, one configuration, for every endpoint
        self.assertIsInstance(factory, HalfCloseServerFactory)
        assert isinstance(factory, HalfCloseServerFactory)
        self.assertIs(factory.handler, sha256_stream)  # its streaming form: the body in bounded memory
        self.assertEqual((factory.max_request, factory.request_timeout), (1000, 2.5))

    def test_in_the_combined_tap(self) -> None:
        self.assertIn("sockproto.tap.halfclose", combined.SERVICES)
        o = combined.Options()
        o.parseOptions([])
        self.assertTrue(IService.providedBy(combined.makeService(o)))

    def test_plugin_registered(self) -> None:
        import twisted.plugins

        makers = {m.tapname: m for m in getPlugins(IServiceMaker, twisted.plugins)}
        maker = makers["sockproto-halfclose"]
        self.assertIsInstance(maker.options(), halfclose.Options)

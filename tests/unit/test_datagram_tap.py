"""``twistd sockproto-datagram``: options, the service built, the plugin registered."""

from __future__ import annotations

from twisted.application.service import IService, IServiceCollection, IServiceMaker
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from sockproto.datagram.endpoints import UDPServerEndpoint
from sockproto.datagram.server import DatagramServerFactory
from sockproto.handlers import echo, sha256
from sockproto.serving.service import ListeningService
from sockproto.tap import combined, datagram


def parse(*args: str) -> datagram.Options:
    options = datagram.Options()
    options.parseOptions(list(args))
    return options


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        o = parse()
        self.assertEqual(o["listen"], ["udp:8751:interface=127.0.0.1"])
        [(text, endpoint)] = o["endpoints"]
        self.assertEqual(text, "udp:8751:interface=127.0.0.1")
        self.assertIsInstance(endpoint, UDPServerEndpoint)
        self.assertEqual((endpoint.port, endpoint.interface), (8751, "127.0.0.1"))
        self.assertIs(o["handler"], echo)
        self.assertEqual(o["header"], "spf1")
        self.assertEqual(o["max-datagram"], 65507)

    def test_values(self) -> None:
        o = parse(
            "--listen", "udp:9000", "--listen", r"udp:port=9001:interface=\:\:",
            "--handler", "sha256", "--header", "RAW", "--max-datagram", "1KiB",
        )  # fmt: skip
        self.assertEqual(o["listen"], ["udp:9000", r"udp:port=9001:interface=\:\:"])
        ports = [(e.port, e.interface) for _, e in o["endpoints"]]
        self.assertEqual(ports, [(9000, ""), (9001, "::")])
        self.assertIs(o["handler"], sha256)
        self.assertEqual((o["header"], o["max-datagram"]), ("raw", 1024))

    def test_bad_values_name_the_option(self) -> None:
        for args, needles in [
            (["--header", "int32"], ["--header", "spf1, raw"]),
            (["--max-datagram", "65508"], ["--max-datagram", "65507"]),
            (["--max-datagram", "63"], ["--max-datagram", "64"]),
            (["--max-datagram", "big"], ["--max-datagram"]),
            (["--handler", "nope"], ["--handler"]),
            (["--listen", "tcp:8751"], ["--listen", "udp:"]),
            (["--listen", "udp:8751:interface=::1"], ["--listen", "\\:"]),
            (["--listen", "udp:99999"], ["--listen", "'99999'"]),
        ]:
            with self.assertRaises(UsageError) as raised:
                parse(*args)
            for needle in needles:
                self.assertIn(needle, str(raised.exception), args)

    def test_help_describes_udp_endpoints(self) -> None:
        text = str(datagram.Options())
        self.assertIn("udp:PORT[:interface=ADDR]", text)
        self.assertIn("--max-datagram", text)


class ServiceTests(SynchronousTestCase):
    def test_one_factory_one_listening_service_per_endpoint(self) -> None:
        o = parse("--listen", "udp:9000", "--listen", "udp:9001", "--header", "raw", "--max-datagram", "1000")
        service = datagram.makeService(o)
        children = list(IServiceCollection(service))
        self.assertEqual(len(children), 2)
        self.assertTrue(all(isinstance(c, ListeningService) for c in children))
        self.assertEqual([c.name for c in children], ["udp:9000", "udp:9001"])
        factory = children[0].factory
        self.assertIsInstance(factory, DatagramServerFactory)
        self.assertIs(children[1].factory, factory)
        self.assertEqual((factory.mode, factory.max_datagram), ("raw", 1000))
        self.assertTrue(IService.providedBy(service))

    def test_joins_the_combined_tap(self) -> None:
        self.assertIn("sockproto.tap.datagram", combined.SERVICES)

    def test_plugin_is_registered(self) -> None:
        import twisted.plugins

        makers = {m.tapname: m for m in getPlugins(IServiceMaker, twisted.plugins)}
        maker = makers["sockproto-datagram"]
        self.assertIs(maker.options, datagram.Options)

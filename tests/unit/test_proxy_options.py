"""``--listen proxy:...``, ``--proxy-from``, ``--proxy-timeout`` and the client's ``--proxy-v2``."""

from __future__ import annotations

import ipaddress

from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from sockproto.cli.endpoints import proxy_v2_header
from sockproto.core.proxy import ProxyHeaderParser
from sockproto.serving.proxy import ProxyEndpoint
from sockproto.tap import frame, halfclose


def parse(module: object, *args: str) -> dict[str, object]:
    options = module.Options()  # type: ignore[attr-defined]
    options.parseOptions(list(args))
    return options  # type: ignore[no-any-return]


class TapOptionsTests(SynchronousTestCase):
    def test_proxy_listeners_and_plain_ones(self) -> None:
        for module in (frame, halfclose):
            o = parse(
                module, "--listen", "proxy:tcp:0:interface=127.0.0.1", "--listen", "tcp:0",
                "--proxy-from", "10.0.0.0/8", "--proxy-from", "::1", "--proxy-timeout", "1.5",
            )  # fmt: skip
            [(_, proxied), (_, plain)] = o["endpoints"]  # type: ignore[misc]
            self.assertIsInstance(proxied, ProxyEndpoint)
            self.assertNotIsInstance(plain, ProxyEndpoint)
            self.assertEqual(proxied.proxy.timeout, 1.5)
            self.assertEqual(
                proxied.proxy.allowed, (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
            )

    def test_defaults(self) -> None:
        o = parse(frame, "--listen", "proxy:unix:/tmp/sockproto-proxy-test.sock")
        [(_, endpoint)] = o["endpoints"]  # type: ignore[misc]
        self.assertEqual((endpoint.proxy.timeout, endpoint.proxy.networks), (3.0, ("127.0.0.0/8", "::1/128")))

    def test_usage_errors(self) -> None:
        for module in (frame, halfclose):
            for args, message in [
                (("--listen", "proxy:ssl:8443:privateKey=k.pem"), "PROXY before TLS is not supported yet"),
                (("--listen", "proxy:tls:8443"), "PROXY before TLS is not supported yet"),
                (("--listen", "proxy:"), "needs an endpoint"),
                (("--listen", "proxy:haproxy:tcp:1"), "use proxy: alone"),
                (("--proxy-from", "ten"), "--proxy-from"),
                (("--proxy-timeout", "0"), "--proxy-timeout"),
            ]:
                with self.subTest(module=module.__name__, args=args):
                    error = self.assertRaises(UsageError, parse, module, *args)
                    self.assertIn(message, str(error))

    def test_halfclose_haproxy_refusal_points_to_proxy(self) -> None:
        error = self.assertRaises(UsageError, parse, halfclose, "--listen", "haproxy:tcp:8752")
        self.assertIn("--listen proxy:tcp:8752", str(error))


class ClientHeaderTests(SynchronousTestCase):
    def header(self, source: str, target: str) -> tuple[object, object]:
        parsed = ProxyHeaderParser().feed(proxy_v2_header(source, target))
        assert parsed is not None
        return parsed.source, parsed.destination

    def test_source_and_destination(self) -> None:
        self.assertEqual(
            self.header("192.0.2.7:4444", "127.0.0.1:8750"), (("192.0.2.7", 4444), ("127.0.0.1", 8750))
        )
        self.assertEqual(self.header("[2001:db8::7]:5", "127.0.0.1:8750"), (("2001:db8::7", 5), ("::", 8750)))
        self.assertEqual(self.header("192.0.2.7:1", "localhost:8750"), (("192.0.2.7", 1), ("0.0.0.0", 8750)))
        self.assertEqual(self.header("192.0.2.7:1", "unix:path=/s"), (("192.0.2.7", 1), ("0.0.0.0", 0)))

    def test_bad_sources(self) -> None:
        for source in ("192.0.2.7", "host:1", "[nope]:1", "192.0.2.7:99999"):
            with self.subTest(source=source):
                self.assertRaises(ValueError, proxy_v2_header, source, "127.0.0.1:1")

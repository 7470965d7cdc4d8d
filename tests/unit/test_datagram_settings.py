"""Datagram service: one settings object shared by its sockets, trusted sources, the module seams."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.application.service import IServiceCollection
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core.datagram import DropReason, encode_datagram
from sockproto.core.spf1 import Kind
from sockproto.datagram.server import DatagramServerFactory
from sockproto.datagram.settings import DatagramSettings
from sockproto.tap.datagram import DEFAULT_RATE_LIMIT, Options, makeService
from sockproto.testing.datagram import FakeDatagramTransport

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ("127.0.0.1", 40000)
SPOOFED = ("203.0.113.9", 5353)


def echo(request: Any) -> bytes:
    return bytes(request.payload)


class TrustedSourcesTests(SynchronousTestCase):
    """Issue 12 item 1: trusted sources are exempt from the per-source rate limit."""

    def serve(self, **kw: Any) -> tuple[FakeDatagramTransport, DatagramServerFactory]:
        factory = DatagramServerFactory(echo, mode="raw", clock=Clock(), **kw)
        return FakeDatagramTransport().attach(factory.buildProtocol(None)), factory

    def burst(self, port: FakeDatagramTransport, addr: tuple[str, int], n: int = 10) -> int:
        return sum(len(port.receive(b"x", addr)) for _ in range(n))

    def test_a_trusted_source_over_the_rate_is_served(self) -> None:
        port, factory = self.serve(rate_limit=2)
        self.assertEqual(self.burst(port, LOCAL), 10)
        self.assertEqual(self.burst(port, ("::1", 40000)), 10)
        self.assertEqual(factory.stats.drops[DropReason.RATE_LIMITED], 0)

    def test_an_untrusted_source_over_the_rate_is_dropped(self) -> None:
        port, factory = self.serve(rate_limit=2)
        self.assertEqual(self.burst(port, SPOOFED), 2)
        self.assertEqual(factory.stats.drops[DropReason.RATE_LIMITED], 8)
        self.assertEqual(factory.stats.as_dict()["dropped_rate_limited"], 8)

    def test_without_trusted_networks_loopback_is_limited(self) -> None:
        port, factory = self.serve(rate_limit=2, trusted=())
        self.assertEqual(self.burst(port, LOCAL), 2)
        self.assertEqual(factory.stats.drops[DropReason.RATE_LIMITED], 8)

    def test_trusted_without_the_amplification_guard(self) -> None:
        port, _ = self.serve(rate_limit=2, amplification=None, trusted=("198.51.100.0/24",))
        self.assertEqual(self.burst(port, ("198.51.100.7", 1)), 10)
        self.assertEqual(self.burst(port, LOCAL), 2)

    def test_the_plugin_default_serves_a_loopback_burst(self) -> None:
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["rate-limit"], DEFAULT_RATE_LIMIT)
        factory = next(iter(IServiceCollection(makeService(options)))).factory  # type: ignore[attr-defined]
        port = FakeDatagramTransport().attach(factory.buildProtocol(None))
        n = int(DEFAULT_RATE_LIMIT) * 3
        sent = [port.receive(encode_datagram(Kind.REQUEST, i, b"x"), LOCAL) for i in range(n)]
        self.assertEqual(sum(map(len, sent)), n)
        self.assertEqual(factory.stats.dropped, 0)
        self.assertIn("trusted", Options.opt_trusted.__doc__ or "")
        self.assertIn("rate limit", (Options.opt_trusted.__doc__ or "").lower())


class SharedSettingsTests(SynchronousTestCase):
    def test_one_settings_object_held_by_reference(self) -> None:
        factory = DatagramServerFactory(echo, clock=Clock())
        first, second = factory.buildProtocol(None), factory.buildProtocol(None)
        self.assertIsInstance(factory.settings, DatagramSettings)
        self.assertIs(first.settings, factory.settings)
        self.assertIs(second.settings, factory.settings)

    def test_a_changed_setting_reaches_existing_sockets(self) -> None:
        held: list[Deferred[bytes]] = []

        def hold(request: Any) -> Deferred[bytes]:
            held.append(Deferred())
            return held[-1]

        factory = DatagramServerFactory(hold, clock=Clock(), max_pending=5)
        port = FakeDatagramTransport().attach(factory.buildProtocol(None))
        factory.max_pending = 1
        self.assertEqual(factory.max_pending, 1)
        for ident in (1, 2):
            port.receive(encode_datagram(Kind.REQUEST, ident, b"x"), LOCAL)
        self.assertEqual((len(held), factory.stats.drops[DropReason.OVERLOADED]), (1, 1))
        factory.cache_entries = 0
        port.receive(b"junk", LOCAL)  # applied from the next datagram on
        self.assertEqual(port.protocol.cache.max_entries, 0)  # type: ignore[union-attr]

    def test_changing_another_setting_keeps_the_guard_state(self) -> None:
        factory = DatagramServerFactory(echo, clock=Clock(), rate_limit=5)
        verifier, rate = factory.verifier, factory.rate_limit
        factory.max_pending = 3
        self.assertIs(factory.verifier, verifier)
        self.assertIs(factory.rate_limit, rate)
        factory.rate_limit = 7
        self.assertIsNot(factory.rate_limit, rate)
        self.assertEqual(factory.rate_limit.rate, 7)  # type: ignore[union-attr]

    def test_validated_in_one_place(self) -> None:
        factory = DatagramServerFactory(echo, clock=Clock())
        with self.assertRaises(ValueError):
            factory.max_pending = 0
        self.assertEqual(factory.max_pending, 1024)

    def test_drain_and_abort_use_the_service_pending_work(self) -> None:
        factory = DatagramServerFactory(lambda r: Deferred(), clock=Clock())
        ports = [FakeDatagramTransport().attach(factory.buildProtocol(None)) for _ in range(2)]
        for i, port in enumerate(ports):
            port.receive(encode_datagram(Kind.REQUEST, i, b"x"), SPOOFED)
        self.assertEqual(len(factory.shared.pending), 2)
        drained = factory.drain()
        self.assertNoResult(drained)
        self.assertEqual(factory.abort(), 2)
        self.successResultOf(drained)
        self.assertEqual(factory.stats.abandoned, 2)


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


class SeamTests(SynchronousTestCase):
    def test_the_protocol_does_not_import_the_server(self) -> None:
        found = imports(ROOT / "sockproto/datagram/protocol.py")
        self.assertFalse({".server", "sockproto.datagram.server"} & found, found)
        source = (ROOT / "sockproto/datagram/protocol.py").read_text()
        for name in ("factory", "check_drained", "_clock"):
            self.assertNotIn(name, source)

    def test_importing_the_client_loads_no_server(self) -> None:
        code = (
            "import sys, sockproto.datagram.client\n"
            "bad = [m for m in ('server', 'protocol', 'cache', 'guard', 'settings')\n"
            "       if 'sockproto.datagram.' + m in sys.modules]\n"
            "print(bad)\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        self.assertEqual((done.returncode, done.stdout.strip()), (0, "[]"), done.stderr)

    def test_mode_lives_in_the_core(self) -> None:
        from sockproto.core import datagram
        from sockproto.datagram import server

        self.assertIs(server.Mode, datagram.Mode)
        self.assertIs(server.MODES, datagram.MODES)

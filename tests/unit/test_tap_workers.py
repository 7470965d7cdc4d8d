"""``--workers`` and ``--reuse-port`` (issue 14 part 2): parsing, refusals, what each process runs."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from sockproto.serving.reuse import REUSE_PORT_SUPPORTED, AdoptingReactor, ReusePortReactor
from sockproto.serving.service import ServerService
from sockproto.serving.worker import SECRET_ENV, WORKER_ENV, WorkerChild, WorkerContext, inherited
from sockproto.serving.workers import WorkerParent, worker_command
from sockproto.tap import combined, datagram, frame, halfclose
from sockproto.tap.options import plugin_service

MODULES = (frame, datagram, halfclose)


def parse(module: Any, *args: str, context: WorkerContext | None = None) -> Any:
    """Parse ``args`` as in a process that inherited ``context`` (``None``: no worker)."""
    options = module.Options()
    options.check_workers = _with_context(options.check_workers, context)
    options.parseOptions(list(args))
    return options


def _with_context(check: Any, context: WorkerContext | None) -> Any:
    return lambda _inherited: check(context)


class DefaultTests(SynchronousTestCase):
    def test_one_worker_is_todays_service(self) -> None:
        for module in MODULES:
            o = parse(module)
            self.assertEqual((o["workers"], o["reuse-port"], o["worker"]), (1, 0, None))
            self.assertFalse(o.spawns_workers)
            self.assertIsInstance(module.makeService(o), ServerService, module)

    def test_bad_counts(self) -> None:
        for text in ("0", "-1", "two"):
            with self.assertRaisesRegex(UsageError, "--workers"):
                parse(frame, "--workers", text)


class ParentTests(SynchronousTestCase):
    def test_parent_keeps_the_arguments(self) -> None:
        args = ["--workers", "3", "--listen", "tcp:8750:interface=127.0.0.1", "--handler", "sha256"]
        o = parse(frame, *args)
        self.assertTrue(o.spawns_workers)
        parent = frame.makeService(o)
        self.assertIsInstance(parent, WorkerParent)
        self.assertEqual((parent.plugin, parent.argv, parent.workers), ("sockproto-frame", args, 3))
        self.assertEqual(
            [(k, t) for k, t, _ in parent.listeners], [("frame", "tcp:8750:interface=127.0.0.1")]
        )

    def test_worker_command_runs_the_same_plugin(self) -> None:
        command = worker_command("sockproto-halfclose", ["--workers", "2"])
        self.assertEqual(command[-3:], ["sockproto-halfclose", "--workers", "2"])
        self.assertIn("--nodaemon", command)
        self.assertIn("sockproto.serving.worker.log_observer", command)

    def test_udp_needs_reuse_port(self) -> None:
        with self.assertRaisesRegex(UsageError, "--reuse-port"):
            parse(datagram, "--workers", "2")
        parse(datagram, "--workers", "1")  # one process: no reply cache to miss

    def test_udp_with_reuse_port_only_probes_in_the_parent(self) -> None:
        if not REUSE_PORT_SUPPORTED:
            raise self.skipTest("SO_REUSEPORT balancing needs Linux")
        o = parse(datagram, "--workers", "2", "--reuse-port")
        self.assertTrue(o.spawns_workers)
        endpoint = o["endpoints"][0][1]
        self.assertIsInstance(endpoint.reactor, ReusePortReactor)
        self.assertTrue(endpoint.reactor.probe)

    def test_metrics_need_a_worker_placeholder(self) -> None:
        with self.assertRaisesRegex(UsageError, "{worker}"):
            parse(frame, "--workers", "2", "--metrics", "tcp:9100")
        o = parse(frame, "--workers", "2", "--metrics", "tcp:910{worker}:interface=127.0.0.1")
        self.assertEqual(o["metrics"], "tcp:910{worker}:interface=127.0.0.1")

    def test_combined(self) -> None:
        with self.assertRaisesRegex(UsageError, "sockproto-datagram: --workers 2 on UDP needs --reuse-port"):
            combined.Options().parseOptions(["--workers", "2"])
        o = combined.Options()
        o.parseOptions([])
        self.assertNotIsInstance(combined.makeService(o), WorkerParent)


class WorkerTests(SynchronousTestCase):
    context = WorkerContext(2, 9, {"frame": [5, 6], "datagram": [7]}, secret=b"k" * 32)

    def test_worker_adopts_its_inherited_sockets(self) -> None:
        o = parse(frame, "--workers", "2", "--listen", "tcp:1:interface=127.0.0.1", "--listen", "tcp6:2",
                  context=self.context)  # fmt: skip
        self.assertFalse(o.spawns_workers)
        fds = [endpoint._reactor.fd for _, endpoint in o["endpoints"]]
        self.assertEqual(fds, [5, 6])
        self.assertTrue(all(isinstance(e._reactor, AdoptingReactor) for _, e in o["endpoints"]))
        service = frame.makeService(o)
        self.assertEqual([type(s) for s in service], [ServerService, WorkerChild])

    def test_worker_with_too_few_sockets(self) -> None:
        with self.assertRaisesRegex(UsageError, "inherited 2 socket"):
            parse(frame, "--workers", "2", "--listen", "tcp:1", "--listen", "tcp:2", "--listen", "tcp:3",
                  context=self.context)  # fmt: skip

    def test_worker_metrics_endpoint(self) -> None:
        o = parse(frame, "--workers", "2", "--listen", "tcp:1", "--listen", "tcp:2",
                  "--metrics", "tcp:910{worker}:interface=127.0.0.1", context=self.context)  # fmt: skip
        self.assertEqual(o["metrics"], "tcp:9102:interface=127.0.0.1")

    def test_workers_share_the_cookie_secret(self) -> None:
        def cookie(context: WorkerContext) -> bytes:
            o = parse(datagram, "--listen", "udp:1", "--amplification", "3", context=context)
            server: Any = datagram.build(o)
            verifier = server.factory.verifier
            return bytes(verifier.cookie("192.0.2.1"))

        self.assertEqual(cookie(self.context), cookie(WorkerContext(1, 9, {"datagram": [8]}, b"k" * 32)))
        self.assertNotEqual(cookie(self.context), cookie(WorkerContext(1, 9, {"datagram": [8]}, b"j" * 32)))

    def test_context_from_the_environment(self) -> None:
        environ = {WORKER_ENV: self.context.to_json(), SECRET_ENV: (b"k" * 32).hex()}
        self.assertEqual(inherited(environ), self.context)
        self.assertIsNone(inherited({}))
        with self.assertRaisesRegex(ValueError, WORKER_ENV):
            inherited({WORKER_ENV: "[1, 2]"})
        with self.assertRaisesRegex(ValueError, SECRET_ENV):
            inherited({WORKER_ENV: self.context.to_json(), SECRET_ENV: "zz"})


class ReusePortTests(SynchronousTestCase):
    def setUp(self) -> None:
        if not REUSE_PORT_SUPPORTED:
            raise self.skipTest("SO_REUSEPORT balancing needs Linux")

    def test_port_zero_refused(self) -> None:
        with self.assertRaisesRegex(CannotListenError, "fixed port"):
            ReusePortReactor(None, probe=True).listenTCP(0, None, interface="127.0.0.1")

    def test_probe_binds_beside_a_reuse_port_socket(self) -> None:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as held:
                held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                held.bind(("127.0.0.1", 0))
                port = held.getsockname()[1]
                probe = ReusePortReactor(None, probe=True)
                listen = probe.listenTCP if kind == socket.SOCK_STREAM else probe.listenUDP
                self.assertIsNone(listen(port, None, interface="127.0.0.1"))

    def test_probe_refuses_a_port_taken_without_reuse_port(self) -> None:
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            held.listen()
            with self.assertRaises(CannotListenError):
                ReusePortReactor(None, probe=True).listenTCP(
                    held.getsockname()[1], None, interface="127.0.0.1"
                )

    def test_unix_and_systemd_refused(self) -> None:
        with self.assertRaisesRegex(CannotListenError, "tcp:, ssl: and udp:"):
            ReusePortReactor(None).listenUNIX("/tmp/x.sock", None)
        with self.assertRaisesRegex(CannotListenError, "systemd"):
            ReusePortReactor(None).adoptStreamPort(3, socket.AF_INET, None)


class PluginServiceTests(SynchronousTestCase):
    def test_plugin_service_outside_a_worker_is_the_service(self) -> None:
        o = parse(halfclose)
        marker: Any = object()
        self.assertIs(plugin_service(o, lambda: marker), marker)

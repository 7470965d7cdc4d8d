"""``twistd sockproto``: every service of the collection on its default loopback endpoint."""

from __future__ import annotations

import importlib
from typing import Any, ClassVar, Final

from twisted.application.service import IService, MultiService
from twisted.python import usage

from ..serving.worker import inherited
from ..serving.workers import Listener, WorkerParent
from .options import ServiceOptions, parse_count, worker_service

__all__ = ["SERVICES", "Options", "makeService"]

SERVICES: Final = ("sockproto.tap.frame", "sockproto.tap.datagram", "sockproto.tap.halfclose")
"""The service modules started, each with ``Options``, ``build`` and ``makeService``."""


class Options(usage.Options):
    """``twistd sockproto`` takes ``--workers`` and ``--reuse-port``: each service runs on its defaults."""

    longdesc = (
        "Run every sockproto service on its default loopback endpoint. With --workers N, N "
        "processes each serve all of them (the datagram service needs --reuse-port then)."
    )
    optParameters: ClassVar[list[list[Any]]] = [
        ["workers", None, "1", "serve from N processes (see the services' --workers)"],
    ]
    optFlags: ClassVar[list[list[str | None]]] = [
        ["reuse-port", None, "(Linux) each process binds its own SO_REUSEPORT sockets"],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.argv: list[str] = []
        self.services: list[tuple[Any, ServiceOptions]] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Parse ``options``, remembered as :attr:`argv` (a worker gets them unchanged)."""
        import sys

        self.argv = list(options) if options is not None else sys.argv[1:]
        super().parseOptions(options)  # type: ignore[no-untyped-call]

    def postOptions(self) -> None:
        try:
            self["workers"] = parse_count(self["workers"])
        except ValueError as e:
            raise usage.UsageError(f"--workers: {e}") from e
        args = ["--workers", str(self["workers"])] + (["--reuse-port"] if self["reuse-port"] else [])
        self.services = []
        for name in SERVICES:
            module = importlib.import_module(name)
            service_options = module.Options()
            try:
                service_options.parseOptions(args)
            except usage.UsageError as e:
                raise usage.UsageError(f"{service_options.plugin}: {e}") from e
            self.services.append((module, service_options))


def makeService(options: Options) -> IService:
    """Build one service per module of :data:`SERVICES` (or the parent of ``--workers`` running them all)."""
    context = inherited()
    if options["workers"] > 1 and context is None:
        listeners: list[Listener] = [
            (sub.kind, text, endpoint) for _, sub in options.services for text, endpoint in sub["endpoints"]
        ]
        return WorkerParent(
            "sockproto",
            options.argv,
            listeners,
            workers=options["workers"],
            reuse_port=options["reuse-port"],
            drain_timeout=max(sub["drain-timeout"] for _, sub in options.services),
        )
    parent = MultiService()
    for module, service_options in options.services:
        module.build(service_options).setServiceParent(parent)
    return worker_service(context, parent)

"""``twistd sockproto``: every service of the collection on its default loopback endpoint."""

from __future__ import annotations

import importlib
from typing import Final

from twisted.application.service import IService, MultiService
from twisted.python import usage

__all__ = ["SERVICES", "Options", "makeService"]

SERVICES: Final = ("sockproto.tap.frame", "sockproto.tap.datagram", "sockproto.tap.halfclose")
"""The service modules started, each with ``Options`` and ``makeService``."""


class Options(usage.Options):
    """``twistd sockproto`` takes no options: each service runs on its defaults."""

    longdesc = "Run every sockproto service on its default loopback endpoint."


def makeService(options: Options) -> IService:
    """Build one service per module of :data:`SERVICES`, each with default options."""
    parent = MultiService()
    for name in SERVICES:
        module = importlib.import_module(name)
        service_options = module.Options()
        service_options.parseOptions([])
        module.makeService(service_options).setServiceParent(parent)
    return parent

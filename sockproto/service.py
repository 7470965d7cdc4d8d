"""Listening services: bind an endpoint while the service runs, and say where."""

from __future__ import annotations

from typing import Any, Protocol

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

__all__ = ["Listenable", "ListeningService", "listening_services"]


class Listenable(Protocol):
    """Anything with an endpoint's ``listen(factory)``: stream endpoints, sockproto's UDP ones."""

    def listen(self, factory: Any, /) -> Deferred[Any]: ...


class ListeningService(Service):
    """Listen on ``endpoint`` with ``factory`` from start to stop.

    A port that cannot be bound fails the start at once (twistd then exits with the
    error) instead of leaving a service that serves nothing.

    :param kind: which sockproto service this is, for logs (``frame``, ``datagram``...).
    :param description: the endpoint string; also the service's name.
    """

    _log = Logger()

    def __init__(self, kind: str, description: str, endpoint: Listenable, factory: Any) -> None:
        self.kind = kind
        self.name = description
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        failures: list[Any] = []
        self.endpoint.listen(self.factory).addCallbacks(self._listening, failures.append)
        if failures:
            failures[0].raiseException()

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()  # type: ignore[no-untyped-call]

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        self._log.info(
            "sockproto-{service} listening on {endpoint} ({address})",
            service=self.kind,
            endpoint=self.description,
            address=port.getHost(),
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        self._log.info(
            "sockproto-{service} stops listening on {endpoint}", service=self.kind, endpoint=self.description
        )
        stopped = port.stopListening()
        return stopped if isinstance(stopped, Deferred) else succeed(None)


def listening_services(name: str, endpoints: list[tuple[str, Listenable]], factory: Any) -> MultiService:
    """Return one service listening with ``factory`` on every ``(description, endpoint)``."""
    parent = MultiService()
    parent.setName(name)
    for description, endpoint in endpoints:
        ListeningService(name, description, endpoint, factory).setServiceParent(parent)  # type: ignore[no-untyped-call]
    return parent

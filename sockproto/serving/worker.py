"""The worker side of ``--workers N``: what a worker inherits, and its tie to the parent.

A worker is the same twistd plugin with the same arguments as its parent, started by
:class:`~sockproto.serving.workers.WorkerParent` with one environment variable more,
:data:`WORKER_ENV`, a JSON object (like systemd's ``LISTEN_FDS``, it describes what
the process inherited, so the arguments stay the user's)::

    {"index": 1, "ready": 6, "listen": {"frame": [3, 4], "halfclose": [5]}}

``index`` numbers the worker from 1 (``{worker}`` in ``--metrics``), ``ready`` is a pipe
to the parent, ``listen`` the inherited listening sockets of each service, in the order
of its ``--listen`` options (empty with ``--reuse-port``: each worker binds its own).
The variable is removed from the environment once read, so handlers' subprocesses do
not see it.

:class:`WorkerChild` writes ``ready`` on the pipe once every socket listens, and stops
the worker (a drain, as on SIGTERM) if the parent goes away (its standard input ends).
The worker logs JSON events on its standard output (:func:`log_observer`, given to
twistd as ``--logger``), which the parent logs as its own.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorCore
from twisted.internet.protocol import Protocol
from twisted.logger import ILogObserver, Logger, jsonFileLogObserver
from twisted.python.failure import Failure

__all__ = ["SECRET_ENV", "WORKER_ENV", "WorkerChild", "WorkerContext", "inherited", "log_observer"]

WORKER_ENV: Final = "SOCKPROTO_WORKER"
"""The environment variable describing a worker's inheritance (see the module)."""

SECRET_ENV: Final = "SOCKPROTO_COOKIE_SECRET"  # noqa: S105 - the name, not the secret
"""The amplification-cookie secret (hex) the parent hands its workers, so they accept each other's cookies."""


@dataclass(frozen=True)
class WorkerContext:
    """What a worker inherited from its parent (see the module)."""

    index: int
    ready: int
    listen: Mapping[str, list[int]] = field(default_factory=dict)
    secret: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_json(cls, text: str) -> WorkerContext:
        """Parse :data:`WORKER_ENV`'s value.

        :raises ValueError: if it is not what a parent writes.
        """
        try:
            data = json.loads(text)
            listen = {str(kind): [int(fd) for fd in fds] for kind, fds in data.get("listen", {}).items()}
            return cls(int(data["index"]), int(data["ready"]), listen)
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
            raise ValueError(f"{WORKER_ENV}: not a worker description: {text!r}") from e

    def to_json(self) -> str:
        """The value of :data:`WORKER_ENV` describing this context."""
        return json.dumps({"index": self.index, "ready": self.ready, "listen": dict(self.listen)})

    def fds(self, kind: str) -> list[int]:
        """The inherited listening sockets of service ``kind``, in ``--listen`` order."""
        return list(self.listen.get(kind, []))


_inherited: list[WorkerContext | None] = []


def inherited(environ: dict[str, str] | None = None) -> WorkerContext | None:
    """This process's :class:`WorkerContext`, or ``None`` if it is no worker.

    Read from :data:`WORKER_ENV` and :data:`SECRET_ENV` once, which are then removed from
    ``os.environ`` (``environ``: read that mapping instead, every time).
    """
    if environ is not None:
        return _context(environ.get(WORKER_ENV), environ.get(SECRET_ENV))
    if not _inherited:
        _inherited.append(_context(os.environ.pop(WORKER_ENV, None), os.environ.pop(SECRET_ENV, None)))
    return _inherited[0]


def _context(text: str | None, secret: str | None) -> WorkerContext | None:
    if text is None:
        return None
    context = WorkerContext.from_json(text)
    try:
        key = bytes.fromhex(secret) if secret else None
    except ValueError as e:
        raise ValueError(f"{SECRET_ENV}: not hexadecimal") from e
    return replace(context, secret=key)


def log_observer() -> ILogObserver:
    """A worker's log: one JSON event a line on standard output (twistd ``--logger``)."""
    return jsonFileLogObserver(sys.stdout)


class _ParentLink(Protocol):
    """The worker's end of its pipes: writes ``ready``, notices the parent going away."""

    def __init__(self, on_parent_gone: Any) -> None:
        self.on_parent_gone = on_parent_gone

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.on_parent_gone()


class WorkerChild(Service):
    """A worker's tie to its parent (see the module); started after every listener.

    :param context: what this worker inherited.
    :param reactor: the reactor to stop if the parent goes away (the global one by default).
    """

    _log = Logger()

    def __init__(self, context: WorkerContext, reactor: Any = None) -> None:
        self.setName("worker")  # type: ignore[no-untyped-call]
        self.context = context
        self.reactor = reactor
        self.link: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the parent only, which forwards it once

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        from twisted.internet._posixstdio import StandardIO

        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor
        # Listeners bind in privilegedStartService, before any startService: all listen now.
        self.link = StandardIO(_ParentLink(self._parent_gone), stdin=0, stdout=self.context.ready)
        self.link.write(b"ready\n")

    def _parent_gone(self) -> None:
        if self.running and IReactorCore(self.reactor).running:
            self._log.warn("sockproto worker {index}: the parent is gone; stopping", index=self.context.index)
            self.reactor.stop()

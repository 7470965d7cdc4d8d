"""Blocking handlers in a thread pool, so that they never stall the reactor.

A handler that blocks (a database driver, a file system call, heavy computation in a
library that releases the GIL) stops every connection of the process while it runs, if
it runs in the reactor's thread.  :class:`ThreadedHandler` runs it in a thread pool of
its own instead (:func:`twisted.internet.threads.deferToThreadPool`): the handler stays a
plain function, the services see a Deferred.  The pool is sized on purpose (``--threads
N``), separate from the reactor's (which resolves names), and started and stopped by the
service that owns it, after the drain, so a handler already running finishes first.

A thread cannot be killed: a handler that overruns the handler timeout gets its
Deferred cancelled and its late answer discarded, but its thread runs on until it
returns, and a still-running thread delays the end of the process until it does.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from ..handlers import Handler
from ..request import Request
from .answering import as_answer

__all__ = ["ThreadedHandler"]


class ThreadedHandler:
    """Call ``handler`` in a thread of a pool of ``threads`` threads.

    :param handler: a synchronous handler, returning bytes (a coroutine or a Deferred
        returned from a thread would be a mistake: it fails as a wrong answer type).
    :param threads: the most threads running handlers at once; more requests wait.
    :param reactor: receives the results (the global reactor by default).
    :param name: the pool's name, seen in thread names.

    :ivar pool: the :class:`~twisted.python.threadpool.ThreadPool`; :meth:`start` and
        :meth:`stop` it with the service (a :class:`~sockproto.serving.service.ServerService`
        does).
    """

    def __init__(
        self,
        handler: Handler,
        threads: int,
        *,
        reactor: IReactorFromThreads | None = None,
        name: str = "sockproto-handlers",
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        self.handler = handler
        self.threads = threads
        self.pool = ThreadPool(minthreads=0, maxthreads=threads, name=name)
        self._reactor = reactor

    def __repr__(self) -> str:
        return f"<ThreadedHandler {self.handler!r} in {self.threads} thread(s)>"

    def __call__(self, request: Request) -> Deferred[bytes]:
        """Queue ``handler(request)`` in the pool; the Deferred fires with its answer.

        A pool nobody started (no :class:`~sockproto.serving.service.ServerService` owns it) is
        started here, and stopped when the reactor shuts down, as the reactor's own is.
        """
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = self._reactor = cast(IReactorFromThreads, global_reactor)
        if not self.pool.started and not self.pool.joined:
            self.start()
            trigger = getattr(reactor, "addSystemEventTrigger", None)
            if trigger is not None:
                trigger("during", "shutdown", self.stop)
        answer: Deferred[Any] = deferToThreadPool(reactor, self.pool, self.handler, request)
        return answer.addCallback(as_answer)

    @property
    def running(self) -> bool:
        """Whether the pool is started."""
        return bool(self.pool.started)

    def start(self) -> None:
        """Start the pool's threads (requests queued before run then)."""
        if not self.pool.started:
            self.pool.start()

    def stop(self) -> None:
        """Stop the pool: wait for the handlers running in it, then end its threads."""
        if self.pool.started:
            self.pool.stop()

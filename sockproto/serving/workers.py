"""The parent of ``--workers N``: bind the sockets, run N worker processes, keep them running.

:class:`WorkerParent` is the service twistd runs in the parent.  It binds every
``--listen`` endpoint itself (or takes systemd's sockets), never reads them, and starts
N workers with ``spawnProcess`` (no ``fork()`` of a running reactor), each the same
twistd plugin with the same arguments, given the sockets as inherited file descriptors
and described by :data:`~sockproto.serving.worker.WORKER_ENV`.  The kernel spreads the
connections of a shared listening socket over the workers that accept on it.  With
``--reuse-port`` the parent binds nothing: each worker binds its own ``SO_REUSEPORT``
socket (the parent only checks, by binding and closing, that they will be able to).

The parent:

- logs its workers' events as its own, tagged ``worker-N`` (``sockproto_worker=N``);
- restarts a worker that dies unexpectedly, after 0.5 s, doubling to 30 s while the
  restarted one dies within 10 s;
- on SIGHUP restarts the workers one at a time: the new one listens before the old one
  is told to drain, and the next starts once the old one has exited;
- on SIGTERM or SIGINT closes its own copy of the sockets, sends the signal to every
  worker (which drain as a single process does) and stops once they have exited
  (those still running ``drain_timeout`` + 15 s later are killed); twistd then exits
  by the signal it received.

Every worker gets the same amplification-cookie secret
(:data:`~sockproto.serving.worker.SECRET_ENV`).
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import suppress
from typing import Any, Final

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import DatagramProtocol, Factory, ProcessProtocol
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure

from .service import Listenable
from .worker import SECRET_ENV, WORKER_ENV, WorkerContext

__all__ = ["BACKOFF_FIRST", "BACKOFF_MAX", "STABLE_AFTER", "Listener", "WorkerParent", "worker_command"]

BACKOFF_FIRST: Final = 0.5
"""Seconds before a worker that died is restarted (doubled while restarts keep failing)."""

BACKOFF_MAX: Final = 30.0
"""The longest wait before a restart."""

STABLE_AFTER: Final = 10.0
"""A worker that ran this many seconds before dying is restarted after :data:`BACKOFF_FIRST`."""

START_TIMEOUT: Final = 30.0
"""Seconds a worker started by SIGHUP has to listen before the restart is given up."""

KILL_GRACE: Final = 15.0
"""Seconds past the drain timeout before a worker that does not exit is killed."""

_TWISTD: Final = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
_SYSTEMD_ENV: Final = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")

Listener = tuple[str, str, Listenable]
"""``(service kind, endpoint string, endpoint)``: one ``--listen`` of one service."""


def worker_command(plugin: str, argv: list[str]) -> list[str]:
    """The command line of a worker: twistd in the foreground, JSON log, then the plugin's own arguments."""
    return [
        sys.executable, "-c", _TWISTD, "--pidfile=", "--nodaemon",
        "--logger", "sockproto.serving.worker.log_observer", plugin, *argv,
    ]  # fmt: skip


class _Event:
    """Fires once with a value; each waiter gets its own Deferred (safe to time out)."""

    def __init__(self) -> None:
        self.value: Any = None
        self.fired = False
        self._waiters: list[Deferred[Any]] = []

    def fire(self, value: Any) -> None:
        if not self.fired:
            self.fired, self.value = True, value
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.called:  # not timed out (cancelled)
                    waiter.callback(value)

    def wait(self) -> Deferred[Any]:
        waiter: Deferred[Any] = Deferred()
        if self.fired:
            waiter.callback(self.value)
        else:
            self._waiters.append(waiter)
        return waiter


class _Worker(ProcessProtocol):
    """One worker process, as its parent sees it."""

    _log = Logger()

    def __init__(self, parent: WorkerParent, slot: int, ready_fd: int) -> None:
        self.parent = parent
        self.slot = slot
        self.ready_fd = ready_fd
        self.started = parent.reactor.seconds()
        self.ready = _Event()  # True once it listens, False if it died first
        self.ended = _Event()
        self.retiring = False  # replaced (SIGHUP) or stopping: its exit is expected
        self.in_roll = False  # started by SIGHUP, not yet listening: the restart handles it
        self.pid: int | None = None
        self._buffers: dict[int, bytes] = {1: b"", 2: b""}

    def connectionMade(self) -> None:
        self.pid = self.transport.pid if self.transport is not None else None

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == self.ready_fd:
            if b"ready" in data and not self.ready.fired:
                self._log.info(
                    "sockproto worker {worker} (pid {pid}) listening", worker=self.slot, pid=self.pid
                )
                self.ready.fire(True)
            return
        if childFD in self._buffers:
            *lines, self._buffers[childFD] = (self._buffers[childFD] + data).split(b"\n")
            for line in lines:
                self._relay(childFD, line)

    def _relay(self, fd: int, line: bytes) -> None:
        text = line.decode("utf-8", "replace").lstrip("\x1e").rstrip()
        if not text:
            return
        if fd == 1:
            try:
                event = eventFromJSON(text)
            except ValueError:
                pass
            else:
                system = event.get("log_system") or "{}#{}".format(
                    event.get("log_namespace", "-"), getattr(event.get("log_level"), "name", "-")
                )
                event["log_system"] = f"worker-{self.slot} {system}"
                event["sockproto_worker"] = self.slot
                globalLogPublisher(event)
                return
        self._log.warn("sockproto worker {worker}: {line}", worker=self.slot, line=text)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process, if it still runs."""
        if self.transport is not None and not self.ended.fired:
            with suppress(ProcessExitedAlready, OSError):
                self.transport.signalProcess(signum)

    def processEnded(self, reason: Failure) -> None:
        for fd in self._buffers:
            if self._buffers[fd]:
                self._relay(fd, self._buffers[fd])
        self.ready.fire(False)
        self.ended.fire(reason.value)
        self.parent._ended(self, reason)


class WorkerParent(Service):
    """Run ``workers`` copies of twistd plugin ``plugin`` on shared sockets (see the module).

    :param plugin: the twistd plugin the workers run (``sockproto-frame``...).
    :param argv: the plugin's arguments, given to every worker unchanged.
    :param listeners: what to bind: ``(kind, endpoint string, endpoint)`` for each
        ``--listen`` of each service; with ``reuse_port`` the endpoints only probe.
    :param workers: how many worker processes.
    :param reuse_port: the workers bind their own ``SO_REUSEPORT`` sockets.
    :param drain_timeout: the workers' ``--drain-timeout`` (the stop kills after it).
    :param reactor: spawns and times the workers (the global reactor by default).
    :param secret: the amplification-cookie secret shared by the workers (random by default).
    """

    _log = Logger()

    def __init__(
        self,
        plugin: str,
        argv: list[str],
        listeners: list[Listener],
        *,
        workers: int,
        reuse_port: bool = False,
        drain_timeout: float = 10.0,
        reactor: Any = None,
        secret: bytes | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        if reactor is None:
            from twisted.internet import reactor
        self.setName("workers")  # type: ignore[no-untyped-call]
        self.plugin, self.argv, self.listeners = plugin, list(argv), list(listeners)
        self.workers, self.reuse_port, self.drain_timeout = workers, reuse_port, drain_timeout
        self.reactor = reactor
        self.secret = secret if secret is not None else os.urandom(32)
        self.ports: list[Any] = []
        self.fds: dict[str, list[int]] = {}
        self.slots: dict[int, _Worker] = {}
        self.alive: set[_Worker] = set()
        self.restarts: dict[int, Any] = {}
        self.failures: dict[int, int] = {}
        self.stopping = False
        self.rolling = False
        self._previous_hup: Any = None

    # -- start ------------------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        """Bind every endpoint (or, with ``--reuse-port``, check that it can be bound)."""
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        for kind, description, endpoint in self.listeners:
            self.fds.setdefault(kind, [])
            dummy = DatagramProtocol() if kind == "datagram" else Factory()
            dummy.noisy = False
            failures: list[Failure] = []
            endpoint.listen(dummy).addCallbacks(
                lambda port, k=kind, d=description: self._bound(k, d, port), failures.append
            )
            if failures:
                failures[0].raiseException()

    def _bound(self, kind: str, description: str, port: Any) -> None:
        if port is None:  # --reuse-port: probed only
            self._log.info("sockproto-{kind}: workers will bind {endpoint}", kind=kind, endpoint=description)
            return
        port.stopReading()  # never accept here: the workers do
        port._shouldShutdown = (
            False  # closing our copy must not shut the workers' down (as for adopted ports)
        )
        self.ports.append(port)
        self.fds[kind].append(port.fileno())
        self._log.info(
            "sockproto-{kind} bound {endpoint} ({address}) for {workers} workers",
            kind=kind, endpoint=description, address=port.getHost(), workers=self.workers,
        )  # fmt: skip

    def startService(self) -> None:
        if not self.ports and not self.reuse_port and self.listeners:
            self.privilegedStartService()
        super().startService()  # type: ignore[no-untyped-call]
        self._previous_hup = signal.signal(signal.SIGHUP, self._on_hup)
        for slot in range(1, self.workers + 1):
            self._spawn(slot)

    def _spawn(self, slot: int) -> _Worker:
        inherited = [fd for fds in self.fds.values() for fd in fds]
        ready_fd = max([2, *inherited]) + 1
        context = WorkerContext(slot, ready_fd, self.fds)
        env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_ENV}
        env[WORKER_ENV] = context.to_json()
        env[SECRET_ENV] = self.secret.hex()
        child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r", ready_fd: "r"}
        child_fds.update({fd: fd for fd in inherited})
        worker = _Worker(self, slot, ready_fd)
        command = worker_command(self.plugin, self.argv)
        self.reactor.spawnProcess(worker, command[0], command, env=env, childFDs=child_fds)
        self.slots[slot] = worker
        self.alive.add(worker)
        self._log.info("sockproto worker {worker} started (pid {pid})", worker=slot, pid=worker.pid)
        return worker

    # -- unexpected exits -------------------------------------------------------------------------

    def _ended(self, worker: _Worker, reason: Failure) -> None:
        self.alive.discard(worker)
        how = _describe(reason)
        if worker.retiring or self.stopping or worker.in_roll or self.slots.get(worker.slot) is not worker:
            self._log.info(
                "sockproto worker {worker} (pid {pid}) exited: {how}",
                worker=worker.slot,
                pid=worker.pid,
                how=how,
            )
            return
        uptime = self.reactor.seconds() - worker.started
        failures = 0 if uptime >= STABLE_AFTER else self.failures.get(worker.slot, 0) + 1
        self.failures[worker.slot] = failures
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2**failures) if failures else BACKOFF_FIRST
        self._log.error(
            "sockproto worker {worker} (pid {pid}) died unexpectedly ({how}) after {uptime:.1f} s; "
            "restarting it in {delay:g} s",
            worker=worker.slot, pid=worker.pid, how=how, uptime=uptime, delay=delay,
            sockproto_event="worker_died",
        )  # fmt: skip
        self.restarts[worker.slot] = self.reactor.callLater(delay, self._restart, worker.slot)

    def _restart(self, slot: int) -> None:
        self.restarts.pop(slot, None)
        if not self.stopping:
            self._spawn(slot)

    # -- SIGHUP: one at a time --------------------------------------------------------------------

    def _on_hup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.restart_all)

    def restart_all(self) -> Deferred[None] | None:
        """Restart every worker, one at a time, each replacement listening before the old one drains."""
        if self.stopping or self.rolling:
            self._log.info("sockproto workers: a restart or stop is under way; SIGHUP ignored")
            return None
        self.rolling = True
        done = Deferred.fromCoroutine(self._roll())
        done.addErrback(lambda f: self._log.failure("sockproto workers: the restart failed", f))
        done.addBoth(lambda _: setattr(self, "rolling", False))
        return done

    async def _roll(self) -> None:
        self._log.info("sockproto workers: restarting {n} worker(s) one at a time", n=self.workers)
        for slot in range(1, self.workers + 1):
            if self.stopping:
                return
            pending = self.restarts.pop(slot, None)
            if pending is not None and pending.active():
                pending.cancel()
            old = self.slots.get(slot)
            new = self._spawn(slot)
            new.in_roll = True
            if old is not None:
                old.retiring = True
            ready = await new.ready.wait().addTimeout(START_TIMEOUT, self.reactor).addErrback(lambda _: False)
            new.in_roll = False
            if not ready:
                self._log.error(
                    "sockproto worker {worker}: the replacement did not start; restart abandoned", worker=slot
                )
                new.retiring = True
                new.signal(signal.SIGKILL)
                if old is not None and not old.ended.fired:
                    old.retiring = False
                    self.slots[slot] = old
                elif not self.stopping:
                    self.restarts[slot] = self.reactor.callLater(BACKOFF_FIRST, self._restart, slot)
                return
            if old is not None:
                old.signal(signal.SIGTERM)
                await old.ended.wait()
        self._log.info("sockproto workers: restart done", sockproto_event="workers_restarted")

    # -- stop -------------------------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        """Close the parent's sockets, forward the stop signal, wait for every worker to exit."""
        super().stopService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.stopping = True
        if self._previous_hup is not None:
            signal.signal(signal.SIGHUP, self._previous_hup)
        for call in self.restarts.values():
            if call.active():
                call.cancel()
        self.restarts.clear()
        ports, self.ports = self.ports, []
        for port in ports:
            port.stopListening()
        signum = getattr(self.reactor, "_exitSignal", None) or signal.SIGTERM
        workers = list(self.alive)
        self._log.info(
            "sockproto workers: stopping {n} worker(s) ({signal})",
            n=len(workers), signal=signal.Signals(signum).name,
        )  # fmt: skip
        for worker in workers:
            worker.retiring = True
            worker.signal(signum)
        if await _all_ended(workers, self.drain_timeout + KILL_GRACE, self.reactor):
            return
        for worker in workers:
            if not worker.ended.fired:
                self._log.warn(
                    "sockproto worker {worker} (pid {pid}) killed", worker=worker.slot, pid=worker.pid
                )
                worker.signal(signal.SIGKILL)
        await _all_ended(workers, KILL_GRACE, self.reactor)


async def _all_ended(workers: list[_Worker], timeout: float, reactor: Any) -> bool:
    """Wait up to ``timeout`` seconds for ``workers`` to exit; return whether they all did."""
    waiting = DeferredList([w.ended.wait() for w in workers], consumeErrors=True)
    timed: list[bool] = []
    await waiting.addTimeout(timeout, reactor).addErrback(lambda _: timed.append(True))
    return not timed


def _describe(reason: Failure) -> str:
    value = reason.value
    number = getattr(value, "signal", None)
    if number:
        return f"killed by {signal.Signals(number).name}"
    return f"exit status {getattr(value, 'exitCode', None)}"

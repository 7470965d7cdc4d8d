"""The handler lifecycle, the same for the three services: call, time out, count, log.

A service calls its handler itself on its hot path (``handler(request)``) and writes a
plain ``bytes`` answer at once.  Anything else goes through the service's
:class:`Answering`:

- :meth:`Answering.start` brings what the handler returned (a Deferred, a coroutine,
  a bytearray) to an answer: ``bytes`` now, or a Deferred whose result is checked
  (:func:`as_answer`), limited in time (:class:`HandlerTimeout` after
  ``handler_timeout`` seconds, the Deferred cancelled), counted in the service's
  ``in_flight`` and registered in a :class:`PendingWork` until it fires;
- :meth:`Answering.failed` logs a failed or timed-out handler (rate-limited) and says
  which SPF/1 error code and message it stands for.

:class:`PendingWork` is the one registry of handler calls still running: a stream
connection keeps one (its calls are cancelled when it is lost), a datagram service
one for all its sockets (its drain waits for it).
"""

from __future__ import annotations

from collections.abc import Callable
from inspect import iscoroutine
from typing import Any, Final, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from ..core.spf1 import ErrorCode
from ..handlers import Handler
from .logs import LogLimiter
from .metrics import ServiceMetrics

__all__ = [
    "Answering",
    "HandlerTimeout",
    "PendingWork",
    "as_answer",
    "failure_message",
]


class HandlerTimeout(Exception):
    """The handler did not answer within the service's handler timeout.

    Its Deferred was cancelled (a coroutine gets :class:`~twisted.internet.defer.CancelledError`
    at its ``await``), and whatever it produces later is discarded.
    """

    def __init__(self, timeout: float) -> None:
        super().__init__(f"the handler did not answer within {timeout:g} s")
        self.timeout = timeout


def as_answer(value: object) -> bytes:
    """Check that a handler's result is bytes (a bytearray or memoryview is copied).

    :raises TypeError: naming the type the handler returned instead.
    """
    if type(value) is bytes:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"handler returned {type(value).__name__}, expected bytes")


def _as_deferred(result: object) -> bytes | Deferred[bytes]:
    """``result`` as an answer: bytes now, or a checked Deferred (for a Deferred or a coroutine).

    :raises TypeError: for a synchronous result that is not bytes-like.
    """
    if isinstance(result, Deferred):
        return result.addCallback(as_answer)
    if iscoroutine(result):
        return Deferred.fromCoroutine(result).addCallback(as_answer)
    return as_answer(result)


def _timed_out(result: object, timeout: float) -> Failure:
    return Failure(HandlerTimeout(timeout))


def failure_message(failure: Failure) -> str:
    """The message an ERROR 4 carries for a failed handler: the exception's name and message.

    Text an exception carries that UTF-8 cannot encode (lone surrogates, from bytes
    decoded with ``surrogateescape``) is replaced, so that any exception can be reported.
    """
    name = failure.type.__name__ if isinstance(failure.type, type) else str(failure.type)
    message = f"handler failed: {name}: {failure.getErrorMessage()}"
    return message.encode("utf-8", "replace").decode("utf-8")


class PendingWork:
    """Handler calls still running: counted, cancelled together, waited for at shutdown.

    A Deferred is :meth:`added <add>` when its handler call starts and leaves when it
    fires (:class:`Answering` does both); :meth:`idle` fires once none is left, after
    the answer of the last one was dealt with.
    """

    __slots__ = ("_running", "_waiting")

    def __init__(self) -> None:
        self._running: dict[Deferred[Any], None] = {}
        self._waiting: list[Deferred[None]] = []

    def __len__(self) -> int:
        return len(self._running)

    def __bool__(self) -> bool:
        return bool(self._running)

    def add(self, d: Deferred[Any]) -> None:
        """``d``'s handler call is running."""
        self._running[d] = None

    def discard(self, d: Deferred[Any]) -> None:
        """``d`` fired (or was cancelled): it no longer runs."""
        self._running.pop(d, None)

    def notify(self) -> None:
        """Fire the :meth:`idle` Deferreds if nothing runs any more."""
        if self._waiting and not self._running:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def idle(self) -> Deferred[None]:
        """A Deferred that fires once nothing runs (at once if nothing does).

        Cancelling it (a drain's deadline) stops the wait, not the work: see
        :meth:`cancel_all`.
        """
        if not self._running:
            return succeed(None)
        d: Deferred[None] = Deferred(self._waiting.remove)
        self._waiting.append(d)
        return d

    def cancel_all(self) -> int:
        """Cancel every running call (their answers are dropped); return how many there were."""
        running = list(self._running)
        for d in running:
            d.cancel()
        return len(running)


class Answering:
    """One service's handler lifecycle: its handler, handler timeout, counters and log.

    :param handler: the service's handler (called by the service's protocols).
    :param timeout: seconds an asynchronous answer may take; ``None``: no limit.
    :param metrics: the service's counters (``in_flight`` counts running calls).
    :param limiter: rate-limits the ``handler_failed`` and ``handler_timeout`` events.
    :param clock: the clock of the timeouts (``None``: the global reactor).
    :param log: the logger of the events (the service's).
    """

    __slots__ = ("_clock_given", "handler", "limiter", "log", "metrics", "service", "timeout")

    def __init__(
        self,
        handler: Handler,
        *,
        timeout: float | None,
        metrics: ServiceMetrics,
        limiter: LogLimiter,
        clock: IReactorTime | None = None,
        log: Logger | None = None,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"handler_timeout must be positive or None, not {timeout}")
        self.handler = handler
        self.timeout = timeout
        self.metrics = metrics
        self.service = metrics.service
        self.limiter = limiter
        self.log = log if log is not None else _log
        self._clock_given = clock

    def start(
        self,
        result: object,
        pending: PendingWork,
        answered: Callable[..., object],
        *args: Any,
    ) -> bytes | Deferred[bytes]:
        """Bring what a handler returned (not plain bytes) to an answer.

        :return: ``bytes`` for a synchronous bytes-like answer; otherwise the Deferred
            of the answer, with :func:`as_answer` and the timeout on it, registered in
            ``pending`` and counted ``in_flight`` until it fires, and
            ``answered(answer_or_failure, *args)`` called when it does (after it left
            ``pending``; ``pending``'s :meth:`~PendingWork.idle` waiters fire after
            ``answered`` returned).
        :raises TypeError: for a synchronous result that is not bytes-like.
        """
        answer = _as_deferred(result)
        if type(answer) is bytes:
            return answer
        d: Deferred[bytes] = answer  # type: ignore[assignment]
        return self.track(d, pending, answered, *args)

    def track(
        self,
        d: Deferred[Any],
        pending: PendingWork,
        answered: Callable[..., object],
        *args: Any,
        timed: bool = True,
    ) -> Deferred[Any]:
        """Count ``d`` (a handler's running call) ``in_flight`` and in ``pending`` until it fires.

        ``answered(result_or_failure, *args)`` is called when it does, after ``d`` left
        ``pending`` and before ``pending``'s idle waiters fire.  ``timed``: the handler
        timeout applies from now (a caller that times the call from another moment, as
        the streaming half-close from the client's half-close, passes ``False``).
        """
        pending.add(d)
        self.metrics.in_flight += 1
        if timed and self.timeout is not None:
            d.addTimeout(self.timeout, self._clock(), onTimeoutCancel=_timed_out)
        d.addBoth(self._left, pending, d)
        d.addBoth(answered, *args)
        d.addBoth(_notify, pending)
        return d

    def _left(self, result: object, pending: PendingWork, d: Deferred[bytes]) -> object:
        pending.discard(d)
        self.metrics.in_flight -= 1
        return result

    def failed(self, failure: Failure, peer: object, consequence: str = "") -> tuple[ErrorCode, str]:
        """Log a failed or timed-out handler (rate-limited); return the error it stands for.

        :param peer: the client, for the log.
        :param consequence: what the service does about it, appended to the log message
            (``": connection reset"``).
        :return: ``(ErrorCode.TIMEOUT, message)`` for :class:`HandlerTimeout`, else
            ``(ErrorCode.HANDLER_FAILED, failure_message(failure))``.
        """
        if failure.check(HandlerTimeout):
            message = failure.getErrorMessage()
            self.limiter.emit(
                self.log, "handler_timeout", LogLevel.warn, "request from {peer}: {message}" + consequence,
                peer=peer, message=message, service=self.service,
            )  # fmt: skip
            return ErrorCode.TIMEOUT, message
        self.limiter.failure(
            self.log, "handler_failed", "handler {handler!r} failed for {peer}" + consequence, failure,
            handler=self.handler, peer=peer, service=self.service,
        )  # fmt: skip
        return ErrorCode.HANDLER_FAILED, failure_message(failure)

    def _clock(self) -> IReactorTime:
        clock = self._clock_given
        if clock is None:
            from twisted.internet import reactor

            clock = self._clock_given = cast(IReactorTime, reactor)
        return clock


_log: Final = Logger(namespace="sockproto.serving.answering")


def _notify(result: object, pending: PendingWork) -> None:
    pending.notify()

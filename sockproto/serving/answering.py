"""Calling a handler and bringing its answer, sync or async, to bytes."""

from __future__ import annotations

from inspect import iscoroutine
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from ..handlers import Handler
from ..request import Request

__all__ = ["HandlerTimeout", "as_answer", "call_handler", "failure_message", "limit_time"]


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


def call_handler(handler: Handler, request: Request) -> bytes | Deferred[bytes]:
    """Run ``handler(request)``: bytes for a synchronous answer, else a Deferred.

    A coroutine is driven by :meth:`Deferred.fromCoroutine`.  A synchronous exception
    or a wrong result type is raised here; an asynchronous one fails the Deferred.
    """
    result: Any = handler(request)
    if isinstance(result, Deferred):
        return result.addCallback(as_answer)
    if iscoroutine(result):
        return Deferred.fromCoroutine(result).addCallback(as_answer)
    return as_answer(result)


def limit_time(answer: Deferred[bytes], timeout: float | None, clock: IReactorTime) -> Deferred[bytes]:
    """Fail ``answer`` with :class:`HandlerTimeout` unless it fires within ``timeout`` seconds.

    On the deadline the Deferred is cancelled, so that a handler that can stop does
    (a coroutine, a Deferred with a canceller); a late result of one that cannot (a
    thread) is discarded by the cancelled Deferred.  ``None`` sets no deadline.
    """
    if timeout is None:
        return answer
    return answer.addTimeout(timeout, clock, onTimeoutCancel=_timed_out)


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

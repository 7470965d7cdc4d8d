"""Calling a handler and bringing its answer, sync or async, to bytes."""

from __future__ import annotations

from inspect import iscoroutine
from typing import Any

from twisted.internet.defer import Deferred

from .handlers import Handler
from .request import Request

__all__ = ["as_answer", "call_handler"]


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

"""Built-in handlers and the lookup behind ``--handler``.

A handler is ``handler(request)`` returning the answer as bytes, a Deferred of bytes,
or a coroutine (``async def``) producing bytes.  Blocking work belongs in a thread
(:func:`twisted.internet.threads.deferToThread`), never in the reactor thread.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final, TypeAlias

from twisted.internet.defer import Deferred

from .request import Request
from .serving.streaming import StreamingRequest, offer_streaming_form

__all__ = ["BUILTINS", "Answer", "Handler", "echo", "peer", "resolve_handler", "sha256", "sha256_stream"]

Answer: TypeAlias = "bytes | Deferred[bytes] | Coroutine[Any, Any, bytes]"
"""What a handler may return."""

Handler: TypeAlias = Callable[[Request], "bytes | Deferred[bytes] | Coroutine[Any, Any, bytes]"]
"""The handler contract shared by every sockproto service."""


def echo(request: Request) -> bytes:
    """Answer the request's payload unchanged."""
    return request.payload


def sha256(request: Request) -> bytes:
    """Answer the hex SHA-256 digest of the payload, then a newline."""
    return hashlib.sha256(request.payload).hexdigest().encode("ascii") + b"\n"


async def sha256_stream(request: StreamingRequest) -> bytes:
    """:func:`sha256`, streaming: the digest of the body taken chunk by chunk, in bounded memory.

    The half-close service uses it for ``--handler sha256`` (see
    :func:`~sockproto.serving.streaming.streaming_form`); the answer is the same.
    """
    digest = hashlib.sha256()
    update = digest.update
    async for chunk in request.body:
        update(chunk)
    return digest.hexdigest().encode("ascii") + b"\n"


offer_streaming_form(sha256, sha256_stream)


def peer(request: Request) -> bytes:
    """Answer the client's address as the server sees it, then a newline.

    ``HOST:PORT`` (``[HOST]:PORT`` for IPv6), else the address as Python shows it.
    Behind a ``proxy:`` listener it is the client the PROXY header names: a quick
    check that a load balancer passes the client's address on.
    """
    address = request.peer
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    else:
        text = repr(address)
    return text.encode("utf-8", "backslashreplace") + b"\n"


BUILTINS: Final[Mapping[str, Handler]] = {"echo": echo, "sha256": sha256, "peer": peer}
"""The handlers ``--handler`` knows by name."""


def resolve_handler(name: str) -> Handler:
    """Return the built-in handler ``name`` or the callable at ``module:attribute``.

    :raises ValueError: naming what could not be found.
    """
    if name in BUILTINS:
        return BUILTINS[name]
    module_name, sep, attribute = name.partition(":")
    if not sep or not module_name or not attribute:
        known = ", ".join(sorted(BUILTINS))
        raise ValueError(f"unknown handler {name!r}: use one of {known} or module:callable")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"handler {name!r}: cannot import {module_name!r} ({e})") from e
    target: object = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"handler {name!r}: {module_name!r} has no {attribute!r}") from None
    if not callable(target):
        raise ValueError(f"handler {name!r} is not callable")
    handler: Handler = target
    return handler

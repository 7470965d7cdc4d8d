"""The half-close client: connect, send the request, half-close, read the answer to EOF.

:func:`halfclose_request` is the whole API for most uses::

    answer = await halfclose_request("tcp:host=127.0.0.1:port=8752", b"hello")

A server that refuses or fails the request resets the connection; the client then
fails with :class:`ServerReset`, never with an empty answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.error import ConnectingCancelledError, ConnectionDone
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    INegotiated,
    ISSLTransport,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from .sending import Body, send_body

__all__ = [
    "DEFAULT_MAX_ANSWER",
    "DEFAULT_TIMEOUT",
    "AnswerTimeout",
    "AnswerTooLarge",
    "HalfCloseClientProtocol",
    "HalfCloseError",
    "HalfCloseUnsupported",
    "ServerReset",
    "halfclose_request",
]

DEFAULT_MAX_ANSWER = 16 * 1024 * 1024
"""The largest answer accepted by default, in bytes (16 MiB)."""

DEFAULT_TIMEOUT = 30.0
"""Seconds :func:`halfclose_request` waits for the whole answer, connecting included."""

_LOST = Failure(ConnectionDone())


class HalfCloseError(Exception):
    """A half-close exchange ended without a complete answer."""


class ServerReset(HalfCloseError):
    """The server reset the connection (or closed it before reading the whole request).

    A sockproto server does this when the request is too large, the handler fails,
    or the request did not arrive in time.
    """


class AnswerTimeout(HalfCloseError, TimeoutError):
    """The whole answer did not arrive in time."""


class AnswerTooLarge(HalfCloseError):
    """The answer passed the client's ``max_answer``; the connection was dropped."""


class HalfCloseUnsupported(HalfCloseError):
    """The transport cannot half-close (TLS: Twisted's TLS has no half-close, twisted#5341)."""


def _can_half_close(transport: object) -> bool:
    """TCP and UNIX transports can; TLS cannot, though its wrapper may claim ``ITCPTransport``.

    (A TLS wrapper copies the interfaces of the transport it wraps; ``INegotiated``
    and ``ISSLTransport`` give it away.)
    """
    return ITCPTransport.providedBy(transport) and not (
        INegotiated.providedBy(transport) or ISSLTransport.providedBy(transport)
    )


@implementer(IHalfCloseableProtocol)
class HalfCloseClientProtocol(Protocol):
    """Send one request, half-close, collect the answer until the server's end of file.

    It provides :class:`~twisted.internet.interfaces.IHalfCloseableProtocol`: the
    server's FIN is the end of the answer (:meth:`readConnectionLost`), while a reset
    is a failure.

    :param request: the bytes to send, or a binary file or async iterator of chunks,
        sent chunk by chunk with the transport's backpressure (:mod:`~sockproto.halfclose.sending`).
    :param max_answer: the connection is dropped and :attr:`answer` fails with
        :class:`AnswerTooLarge` once the answer passes this many bytes; ``None``
        accepts any size.
    :param proxy_header: bytes sent before the request: a PROXY protocol header
        (:func:`~sockproto.core.proxy_encode.encode_v2`) for a server listening on
        ``proxy:``, as a load balancer would send it.
    :param on_data: called with each chunk of the answer as it arrives, instead of
        collecting it: :attr:`answer` then fires with ``b""``.

    :ivar answer: fires with the whole answer, or fails (:class:`ServerReset`,
        :class:`AnswerTooLarge`, :class:`HalfCloseUnsupported`).  Cancelling it
        aborts the connection.
    """

    def __init__(
        self,
        request: Body,
        *,
        max_answer: int | None = DEFAULT_MAX_ANSWER,
        proxy_header: bytes = b"",
        on_data: Callable[[bytes], object] | None = None,
    ) -> None:
        self.request = request
        self.on_data = on_data
        self._sending: Deferred[None] | None = None
        self.proxy_header = proxy_header
        self.max_answer = max_answer
        self.answer: Deferred[bytes] = Deferred(self._cancel)
        self._chunks: list[bytes] = []
        self._received = 0
        self._sent = False  # our write side is shut down: the server has the whole request

    # -- IProtocol --------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        if not _can_half_close(transport):
            self._fail(
                HalfCloseUnsupported(
                    f"{type(transport).__name__} cannot half-close "
                    "(Twisted's TLS has no half-close, twisted#5341): use tcp:, tcp6: or unix:"
                )
            )
            return
        if self.proxy_header:
            transport.write(self.proxy_header)
        if isinstance(self.request, bytes):
            transport.write(self.request)
            transport.loseWriteConnection()
            return
        sending = self._sending = send_body(transport, self.request)
        sending.addCallbacks(lambda _: transport.loseWriteConnection(), self._send_failed)

    def dataReceived(self, data: bytes) -> None:
        if self.answer.called:
            return
        self._received += len(data)
        if self.max_answer is not None and self._received > self.max_answer:
            self._fail(AnswerTooLarge(f"the answer passed the {self.max_answer}-byte limit"))
            return
        if self.on_data is not None:
            self.on_data(data)
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = _LOST) -> None:
        sending, self._sending = self._sending, None
        if sending is not None and not sending.called:
            sending.cancel()  # paused forever otherwise: the transport is gone
        if self.answer.called:
            return
        if reason.check(ConnectionDone):
            message = "the connection was closed before the answer was complete"
        else:
            message = (
                "the server reset the connection (a sockproto server does when the request is "
                "too large or too slow, or its handler fails)"
            )
        error = ServerReset(f"{message}: {reason.getErrorMessage()}")
        error.__cause__ = reason.value
        self.answer.errback(error)

    # -- IHalfCloseableProtocol -------------------------------------------------------

    def writeConnectionLost(self) -> None:
        """Our half-close is done: the server has the whole request."""
        self._sent = True

    def readConnectionLost(self) -> None:
        """The server's FIN: the answer is complete if the request was all sent."""
        assert self.transport is not None
        if self.answer.called:
            return
        if self._sent:
            chunks, self._chunks = self._chunks, []
            self.answer.callback(b"".join(chunks))
            self.transport.loseConnection()  # both sides are shut: closes at once
        else:
            self._fail(ServerReset("the server closed the connection before reading the whole request"))

    # -- internals --------------------------------------------------------------------

    def _send_failed(self, failure: Failure) -> None:
        """Reading the body failed (or sending was cancelled): abort, the server gets no request."""
        if not self.answer.called and not failure.check(CancelledError):
            self._fail(
                failure.value if isinstance(failure.value, Exception) else HalfCloseError(str(failure))
            )

    def _fail(self, error: Exception) -> None:
        self._chunks = []
        self.answer.errback(error)
        transport: Any = self.transport
        transport.abortConnection()

    def _cancel(self, answer: Deferred[bytes]) -> None:
        self._chunks = []
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()


def halfclose_request(
    endpoint: str | IStreamClientEndpoint,
    request: Body,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    max_answer: int | None = DEFAULT_MAX_ANSWER,
    reactor: Any = None,
    proxy_header: bytes = b"",
    on_data: Callable[[bytes], object] | None = None,
) -> Deferred[bytes]:
    """Send ``request`` to a half-close server; the Deferred fires with the whole answer.

    Connects, writes ``request``, shuts down the write side, and reads until the
    server closes.  It fails with :class:`ServerReset` if the server resets the
    connection (a sockproto server does for a request too large, a handler failure, a
    request too slow), :class:`AnswerTimeout` if the whole answer has not come
    ``timeout`` seconds after the call, :class:`AnswerTooLarge` past ``max_answer``
    bytes, :class:`HalfCloseUnsupported` over TLS, or with the connection error if
    the connection cannot be made.  Cancelling it aborts the connection.

    :param endpoint: a client endpoint string (``tcp:host=127.0.0.1:port=8752``,
        ``tcp:host=\\:\\:1:port=8752``, ``unix:path=/run/app.sock``) or an endpoint.
    :param timeout: seconds, or ``None`` to wait as long as it takes.
    :param reactor: the reactor (the global one by default).
    :param proxy_header: a PROXY protocol header sent before ``request`` (for a server
        listening on ``proxy:``; see :func:`~sockproto.core.proxy_encode.encode_v2`).
    :param request: bytes, or a binary file (``open(path, "rb")``, ``sys.stdin.buffer``)
        or an async iterator of ``bytes`` chunks: sent as it is read, never whole in memory.
    :param on_data: called with each chunk of the answer as it arrives (the Deferred
        then fires with ``b""``); ``None``: the answer is collected and fired whole.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    if isinstance(endpoint, str):
        endpoint = clientFromString(reactor, endpoint)
    proto = HalfCloseClientProtocol(
        request, max_answer=max_answer, proxy_header=proxy_header, on_data=on_data
    )
    connected: Deferred[HalfCloseClientProtocol] = connectProtocol(endpoint, proto)
    answer: Deferred[bytes] = connected.addCallback(lambda p: p.answer)
    if timeout is not None:

        def timed_out(result: Any, seconds: float) -> Any:
            if not isinstance(result, Failure):
                return result
            if result.check(ConnectingCancelledError):
                return Failure(AnswerTimeout(f"could not connect within {seconds:g} s"))
            return Failure(AnswerTimeout(f"no complete answer within {seconds:g} s"))

        answer.addTimeout(timeout, reactor, onTimeoutCancel=timed_out)
    return answer

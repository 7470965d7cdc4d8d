"""The half-close request, sans IO: one request per connection, ended by the peer's end of file.

:class:`HalfCloseRequest` holds the rules of one half-close connection and nothing
else (no sockets, no Twisted, no clock): the Twisted protocol
(:class:`~sockproto.halfclose.server.HalfCloseServerProtocol`) feeds it what the
transport reports and does what it says.  Its state is one :class:`State`::

    RECEIVING --eof_received()--> COMPLETE --answering()--> ANSWERING
        |                            |                          |
        |                            +------answer(bytes)-------+--> ANSWERED
        +---------------- reset(reason) ------------------------+--> RESET(reason)

- ``RECEIVING``: request bytes arrive (:meth:`~HalfCloseRequest.receive_data`); the
  request is *counted* in bytes (:attr:`~HalfCloseRequest.received`), and passing
  ``max_request`` resets (:attr:`ResetReason.TOO_LARGE`) and drops what was held;
- ``COMPLETE``: the peer half-closed; :meth:`~HalfCloseRequest.eof_received` handed
  out the whole payload, the handler has been called;
- ``ANSWERING``: the handler answers later (a Deferred, a coroutine);
- ``ANSWERED`` (final): the answer is to be written, then the connection closed (FIN);
- ``RESET`` (final): the connection is to be aborted (a reset, never an empty answer),
  for :attr:`~HalfCloseRequest.reason`.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["HalfCloseRequest", "HalfCloseStateError", "ResetReason", "State"]


class State(Enum):
    """Where a half-close connection's one request is."""

    RECEIVING = "receiving"
    COMPLETE = "complete"
    ANSWERING = "answering"
    ANSWERED = "answered"
    RESET = "reset"


class ResetReason(Enum):
    """Why a half-close connection was reset instead of answered."""

    TOO_LARGE = "the request passed max_request"
    REQUEST_TIMEOUT = "the whole request did not arrive in time"
    HANDLER_FAILED = "the handler failed"
    HANDLER_TIMEOUT = "the handler did not answer in time"
    SHUTDOWN = "the service shut down before the request began"
    LOST = "the connection was lost before the answer"


class HalfCloseStateError(Exception):
    """An event that cannot happen in the request's state (a bug in the caller)."""


# The states as module globals: on Python 3.11 reading a member through its enum class
# (``State.RECEIVING``) goes through ``EnumType.__getattr__``'s hook, about 100 ns a
# read against 8 for a global; a request reads them five times or so (measured with
# benchmarks/count_halfclose.py: together with the protocol's own, ~7,800 fewer
# instructions per connection).
_RECEIVING = State.RECEIVING
_COMPLETE = State.COMPLETE
_ANSWERING = State.ANSWERING
_ANSWERED = State.ANSWERED
_RESET = State.RESET
_TOO_LARGE = ResetReason.TOO_LARGE
_FINAL = (_ANSWERED, _RESET)


class HalfCloseRequest:
    """The state of one half-close connection's request.

    :param max_request: the largest request accepted, in bytes (``>= 0``).

    :ivar state: the :class:`State`.
    :ivar received: request bytes received so far (also after a reset for size).
    :ivar reason: the :class:`ResetReason` once ``state`` is ``RESET``, else ``None``.
    """

    __slots__ = ("_chunks", "max_request", "reason", "received", "state")

    def __init__(self, max_request: int) -> None:
        if max_request < 0:
            raise ValueError(f"max_request must be >= 0, not {max_request}")
        self.max_request = max_request
        self.state = _RECEIVING
        self.received = 0
        self.reason: ResetReason | None = None
        self._chunks: list[bytes] = []

    @property
    def held(self) -> int:
        """Request bytes held (never more than ``max_request``)."""
        return sum(map(len, self._chunks))

    @property
    def idle(self) -> bool:
        """Whether nothing has arrived yet: a drain may reset the connection at no loss."""
        return self.state is _RECEIVING and self.received == 0

    @property
    def finished(self) -> bool:
        """Whether the request is answered or reset (nothing more can happen to it)."""
        return self.state in _FINAL

    def receive_data(self, data: bytes) -> bool:
        """Take request bytes; return ``False`` if they made the request too large (now reset).

        Bytes arriving in another state than ``RECEIVING`` (Twisted may deliver a read
        before an abort takes effect) are ignored and counted nowhere.
        """
        if self.state is not _RECEIVING:
            return True
        received = self.received = self.received + len(data)
        if received > self.max_request:
            self.reset(_TOO_LARGE)
            return False
        self._chunks.append(data)
        return True

    def eof_received(self) -> bytes:
        """The peer half-closed: ``RECEIVING`` -> ``COMPLETE``; return the whole payload.

        :raises HalfCloseStateError: in any other state (a reset request has no payload).
        """
        if self.state is not _RECEIVING:
            raise HalfCloseStateError(f"end of file in state {self.state.name}")
        self.state = _COMPLETE
        chunks, self._chunks = self._chunks, []
        return b"".join(chunks)  # one chunk: that very bytes object, not a copy

    def answering(self) -> None:
        """The handler answers later: ``COMPLETE`` -> ``ANSWERING``.

        :raises HalfCloseStateError: in any other state.
        """
        if self.state is not _COMPLETE:
            raise HalfCloseStateError(f"answering in state {self.state.name}")
        self.state = _ANSWERING

    def answer(self, data: bytes) -> bytes:
        """The handler's answer: ``COMPLETE`` or ``ANSWERING`` -> ``ANSWERED``; return the bytes to send.

        :raises HalfCloseStateError: in any other state (an answer after a reset is a bug:
            the caller drops it).
        """
        if self.state is not _COMPLETE and self.state is not _ANSWERING:
            raise HalfCloseStateError(f"answer in state {self.state.name}")
        self.state = _ANSWERED
        return data

    def reset(self, reason: ResetReason) -> bool:
        """Reset the request for ``reason``; return ``False`` if it was answered or reset already."""
        if self.state in _FINAL:
            return False
        self.state = _RESET
        self.reason = reason
        self._chunks = []
        return True

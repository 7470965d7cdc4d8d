"""A streamed half-close request, sans IO: the body handed on in chunks, within a bounded buffer.

:class:`StreamingRequest` keeps the rules of
:class:`~sockproto.core.halfclose.HalfCloseRequest` (its :class:`~sockproto.core.halfclose.State`
and :class:`~sockproto.core.halfclose.ResetReason`, ``max_request`` counted on every
byte) but never joins the body: the chunks read wait in a FIFO until the handler takes
them (:meth:`~StreamingRequest.take`), and the FIFO's size decides the backpressure:

- past ``high_water`` bytes held, :meth:`~StreamingRequest.receive_data` says to
  *pause* reading (the kernel's buffers fill, the client's ``send`` blocks);
- once the handler has taken enough to leave ``low_water`` bytes or fewer,
  :meth:`~StreamingRequest.take` says to *resume*.

So a request holds at most ``high_water`` plus one read, whatever its size.  The
handler may answer before the body ends (``answer`` from ``RECEIVING``): the rest of
the body is then counted and dropped until end of file, so that the close is a FIN,
not a reset.
"""

from __future__ import annotations

from collections import deque

from .halfclose import HalfCloseRequest, HalfCloseStateError, ResetReason, State

__all__ = ["DEFAULT_HIGH_WATER", "DEFAULT_LOW_WATER", "StreamingRequest"]

DEFAULT_HIGH_WATER = 1024 * 1024
"""Body bytes held before reading pauses (1 MiB: four 256 KiB reads)."""

DEFAULT_LOW_WATER = 256 * 1024
"""Body bytes held at most when reading resumes."""


class StreamingRequest(HalfCloseRequest):
    """The state of one half-close connection whose handler takes the body in chunks.

    :param max_request: the largest request accepted, in bytes; ``None``: no limit.
    :param high_water: bytes held past which reading is to pause.
    :param low_water: bytes held at or under which paused reading is to resume.

    :ivar eof: whether the peer's end of file has arrived (in any state).
    :ivar paused: whether the caller was told to pause reading and not yet to resume.
    """

    __slots__ = ("_held", "eof", "high_water", "low_water", "paused")
    _chunks: deque[bytes]  # type: ignore[assignment]
    max_request: int | None  # type: ignore[assignment]

    def __init__(
        self,
        max_request: int | None,
        *,
        high_water: int = DEFAULT_HIGH_WATER,
        low_water: int = DEFAULT_LOW_WATER,
    ) -> None:
        if max_request is not None and max_request < 0:
            raise ValueError(f"max_request must be >= 0 or None, not {max_request}")
        if not 0 <= low_water < high_water:
            raise ValueError(f"need 0 <= low_water < high_water, not {low_water}, {high_water}")
        self.max_request = max_request
        self.state = State.RECEIVING
        self.received = 0
        self.reason: ResetReason | None = None
        self._chunks = deque()
        self._held = 0
        self.high_water = high_water
        self.low_water = low_water
        self.eof = False
        self.paused = False

    @property
    def held(self) -> int:
        """Body bytes held, not yet taken by the handler."""
        return self._held

    @property
    def truncated(self) -> bool:
        """Always ``False``: a reset half-close connection ends its handler's run instead."""
        return False

    @property
    def ended(self) -> bool:
        """Whether the handler has taken the whole body (end of file, nothing held)."""
        return self.eof and not self._chunks

    def receive_data(self, data: bytes) -> bool:
        """Count and hold body bytes; return ``False`` if they made the request too large (now reset).

        Bytes after the answer are counted against ``max_request`` and dropped; bytes
        after a reset are ignored.  Check :meth:`pause_wanted` afterwards.
        """
        state = self.state
        if state is State.RESET or self.eof:
            return True
        received = self.received = self.received + len(data)
        limit = self.max_request
        if limit is not None and received > limit:
            self.reset(ResetReason.TOO_LARGE)
            return False
        if state is State.RECEIVING:
            self._chunks.append(data)
            self._held += len(data)
        return True

    def pause_wanted(self) -> bool:
        """Whether reading is to pause now (said once, until :meth:`take` says to resume)."""
        if not self.paused and self._held > self.high_water:
            self.paused = True
            return True
        return False

    def take(self) -> bytes | None:
        """The oldest chunk held, or ``None`` if none is; check :meth:`resume_wanted` after."""
        if not self._chunks:
            return None
        chunk = self._chunks.popleft()
        self._held -= len(chunk)
        return chunk

    def resume_wanted(self) -> bool:
        """Whether paused reading is to resume now (said once)."""
        if self.paused and self._held <= self.low_water:
            self.paused = False
            return True
        return False

    def eof_received(self) -> bytes:
        """The peer half-closed: ``RECEIVING`` -> ``COMPLETE``; the body's chunks stay held.

        After an early answer (``ANSWERED``) it only notes the end of file.  Returns
        ``b""``: the body is never joined.

        :raises HalfCloseStateError: after a reset, or a second time.
        """
        if self.state is State.RESET or self.eof:
            raise HalfCloseStateError(f"end of file in state {self.state.name}")
        self.eof = True
        if self.state is State.RECEIVING:
            self.state = State.COMPLETE
        return b""

    def answer(self, data: bytes) -> bytes:
        """The handler's answer is complete: -> ``ANSWERED``, also before end of file.

        What is held is dropped, and the rest of the body will be (see :meth:`receive_data`).
        Returns ``data``; check :meth:`resume_wanted` after.

        :raises HalfCloseStateError: after a reset, or a second answer.
        """
        if self.state in (State.ANSWERED, State.RESET):
            raise HalfCloseStateError(f"answer in state {self.state.name}")
        self.state = State.ANSWERED
        self._drop()
        return data

    def reset(self, reason: ResetReason) -> bool:
        """Reset the request for ``reason`` (dropping what is held); ``False`` if it was final already."""
        if self.state in (State.ANSWERED, State.RESET):
            return False
        self.state = State.RESET
        self.reason = reason
        self._drop()
        return True

    def _drop(self) -> None:
        self._chunks.clear()
        self._held = 0

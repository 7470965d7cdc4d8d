"""The datagram server's rules for one socket, without I/O: what one datagram gets.

:class:`DatagramRules` decides, for each datagram received (:meth:`~DatagramRules.receive`):
drop it (a :class:`~sockproto.core.datagram.DropReason`), send a reply now (a PONG, a
cached reply), or give a request to the handler; then, for the handler's answer or
failure (:meth:`~DatagramRules.answer`), the reply to send or nothing.  It applies the
per-source rate limit (trusted sources exempt), the SPF/1 parsing, the reply cache,
the pending limit, the datagram size limit and the amplification guard, and counts
each outcome in the service's stats.  Sending, calling the handler, timeouts and logs
belong to the Twisted adapter, :class:`sockproto.datagram.protocol.DatagramServerProtocol`.

Plain Python (the sans-IO rule).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, cast

from .datagram import (
    HEADER_SIZE,
    MAX_UDP_PAYLOAD,
    SERVER_KINDS,
    DropReason,
    Mode,
    encode_datagram,
    encode_error_datagram,
    parse_datagram,
)
from .datagram_cache import IN_PROGRESS, ReplyCache
from .datagram_guard import SourceRateLimit, SourceVerifier
from .spf1 import ErrorCode, Kind

__all__ = ["Address", "DatagramRules", "Note"]

Address = tuple[str, int]
Note = Callable[[str, Any, int, int], object]
"""``note(category, request, size, limit)``: an answer could not go as it was (for a log)."""

_PING: Final = int(Kind.PING)
_PONG: Final = int(Kind.PONG)
_RESPONSE: Final = int(Kind.RESPONSE)


def _anyone(host: str) -> bool:
    """Every source is verified: the amplification guard is off."""
    return True


def _no_note(category: str, request: Any, size: int, limit: int) -> None:
    """Log nothing."""


class DatagramRules:
    """One socket's rules (see the module).  Its attributes are the settings it applies.

    :param mode: ``"spf1"`` or ``"raw"``.
    :param max_datagram: the largest reply, header included.
    :param max_pending: requests whose handler may run at once (the caller says how many do).
    :param amplification: an unverified source gets no answer over this many times its
        request (``None``: no guard).
    :param rate: the per-source rate limit, or ``None``.
    :param verifier: tells verified sources (``None``: no guard).
    :param cache: this socket's reply cache (SPF/1 mode).
    :param stats: the service's counters (a :class:`~sockproto.datagram.stats.DatagramStats`).
    :param peers: the handler's view of each sender address (``peers[addr]``).
    :param request_type: builds a request as ``(kind, id, payload, header, spec, peer)``.
    :param note: called for an answer too large or over the amplification limit.
    """

    __slots__ = (
        "amplification", "cache", "is_verified", "max_answer", "max_datagram", "max_pending",
        "note", "peers", "rate", "raw", "request_type", "stats", "verifier",
    )  # fmt: skip

    def __init__(
        self,
        *,
        mode: Mode,
        max_datagram: int,
        max_pending: int,
        amplification: int | None,
        rate: SourceRateLimit | None,
        verifier: SourceVerifier | None,
        cache: ReplyCache,
        stats: Any,
        peers: Mapping[Address, Any],
        request_type: Callable[..., Any],
        note: Note = _no_note,
    ) -> None:
        self.raw = mode == "raw"
        self.max_datagram = max_datagram
        self.max_pending = max_pending
        # An answer up to this many times its request goes to anyone, with no lookup.
        self.amplification = amplification or MAX_UDP_PAYLOAD
        # The largest handler answer that fits in one reply datagram.
        self.max_answer = max_datagram - (0 if self.raw else HEADER_SIZE)
        self.rate = rate
        self.verifier = verifier
        self.is_verified: Callable[[str], bool] = verifier.is_verified if verifier is not None else _anyone
        self.cache = cache
        self.stats = stats
        self.peers = peers
        self.request_type = request_type
        self.note = note

    def receive(self, datagram: bytes, addr: Address, running: int) -> Any:
        """Decide what one datagram from ``addr`` gets, ``running`` handlers running.

        :return: a request (of ``request_type``, its ``peer`` set) to give the handler,
            not counted yet (:meth:`answer` or the caller counts it); ``bytes``, a reply
            to send now; a :class:`DropReason`, dropped (counted; the caller logs it);
            or ``None``: counted, nothing to send.
        """
        rate = self.rate
        if rate is not None and not rate.allow(addr[0]):
            return self._dropped(DropReason.RATE_LIMITED, len(datagram))
        if self.raw:
            if running >= self.max_pending:
                return self._dropped(DropReason.OVERLOADED, len(datagram))
            return self.request_type(None, None, datagram, (), None, self.peers[addr])
        frame: Any = parse_datagram(datagram, SERVER_KINDS, self.request_type)
        if type(frame) is not self.request_type:
            return self._dropped(cast(DropReason, frame), len(datagram))
        frame.peer = self.peers[addr]
        stats = self.stats
        if frame.kind == _PING:
            self._received(len(datagram))
            stats.pings += 1
            verifier = self.verifier
            if verifier is not None and frame.payload.startswith(b"cookie="):
                verifier.redeem(addr[0], frame.payload)
            return self._framed(frame, _PONG, frame.payload)
        cached = self.cache.lookup((addr, frame.id))
        if cached is None:
            if running >= self.max_pending:
                return self._dropped(DropReason.OVERLOADED, len(datagram))
            return frame
        if cached is IN_PROGRESS:
            return self._dropped(DropReason.IN_PROGRESS, len(datagram))
        self._received(len(datagram))
        stats.cache_hits += 1
        return self._guard(cast(bytes, cached), addr, len(datagram), frame)

    def begin(self, request: Any, addr: Address) -> None:
        """``request``'s handler answers later: its retransmissions are dropped meanwhile."""
        if not self.raw:
            self.cache.begin((addr, request.id))

    def abandon(self, request: Any, addr: Address) -> None:
        """``request``'s answer will not be sent (its call was cancelled): forget it."""
        if not self.raw:
            self.cache.finish((addr, request.id), None)

    def answer(
        self, request: Any, addr: Address, size: int, result: bytes | tuple[ErrorCode, str]
    ) -> bytes | None:
        """The reply to ``result`` (the handler's answer, or the error of its failure), or ``None``.

        ``size`` is the request datagram's.  The outcome is counted (``answers`` or
        ``errors``, drops); the reply is cached (SPF/1).  The caller sends the reply
        and counts it sent.
        """
        stats = self.stats
        if self.raw:
            if type(result) is tuple:
                stats.error(result[0])
                stats.drop(DropReason.HANDLER_FAILED)
                return None
            answer = cast(bytes, result)
            if len(answer) > self.max_datagram:
                self.note("answer_too_large", request, len(answer), self.max_datagram)
                stats.error(ErrorCode.TOO_LARGE)
                stats.drop(DropReason.ANSWER_TOO_LARGE)
                return None
            if len(answer) > self.amplification * size and not self.is_verified(addr[0]):
                self.note("amplification", request, len(answer), size)
                stats.guarded += 1
                stats.error(ErrorCode.TOO_LARGE)
                stats.drop(DropReason.AMPLIFICATION)
                return None
            stats.answers += 1
            return answer
        if type(result) is tuple:
            code, message = result
            reply = encode_error_datagram(request.id or 0, code, message, self.max_datagram)
        else:
            reply = self._framed(request, _RESPONSE, cast(bytes, result))
        self.cache.finish((addr, request.id), reply)
        sent = self._guard(reply, addr, size, request)
        if sent is None:
            stats.error(ErrorCode.TOO_LARGE)
            return None
        if sent[3] == _RESPONSE:
            stats.answers += 1
        else:
            stats.error(ErrorCode(int.from_bytes(sent[HEADER_SIZE : HEADER_SIZE + 2], "big")))
        return sent

    def _framed(self, request: Any, kind: int, payload: bytes) -> bytes:
        """One SPF/1 datagram, or ERROR 2 if ``payload`` makes it too big."""
        ident = request.id or 0
        if len(payload) + HEADER_SIZE <= self.max_datagram:
            return encode_datagram(kind, ident, payload)
        message = (
            f"answer of {len(payload)} bytes does not fit in a {self.max_datagram}-byte datagram "
            f"with its {HEADER_SIZE}-byte header"
        )
        self.note("answer_too_large", request, len(payload), self.max_datagram)
        return encode_error_datagram(ident, ErrorCode.TOO_LARGE, message, self.max_datagram)

    def _guard(self, reply: bytes, addr: Address, size: int, request: Any) -> bytes | None:
        """``reply``, or an ERROR 2 with a cookie if it is too big for an unverified source.

        ``None`` (dropped, counted ``amplification``) when even that ERROR would be too big.
        """
        if len(reply) <= self.amplification * size or self.is_verified(addr[0]):
            return reply
        verifier = self.verifier
        assert verifier is not None
        self.stats.guarded += 1
        self.note("amplification", request, len(reply), size)
        cookie = verifier.cookie(addr[0]).decode("ascii")
        limit = min(self.max_datagram, self.amplification * size)
        if limit < HEADER_SIZE + 2 + len(cookie):
            self.stats.drop(DropReason.AMPLIFICATION)
            return None
        message = (
            f"{cookie}; the answer ({len(reply)} bytes) is over {self.amplification} times the request "
            f"({size} bytes) and this source is not verified: PING with the cookie as payload, then retry"
        )
        return encode_error_datagram(request.id or 0, ErrorCode.TOO_LARGE, message, limit)

    def _received(self, size: int) -> None:
        stats = self.stats
        stats.received += 1
        stats.bytes_in += size

    def _dropped(self, reason: DropReason, size: int) -> DropReason:
        """Count a ``size``-byte datagram received and dropped for ``reason``; return it."""
        self._received(size)
        self.stats.drops[reason] += 1
        return reason

"""The datagram server's protocol: one UDP socket, served for its factory.

See :mod:`sockproto.datagram.server` for the behaviour; this module holds the protocol.

The common case is kept short: a synchronous handler whose answer may go back at once
is answered from :meth:`~DatagramServerProtocol.datagramReceived` with one ``sendto``
and counted once (:attr:`~sockproto.datagram.stats.DatagramStats.served`); anything
else (drops, PINGs, the reply cache, Deferreds, failures, guarded answers) takes the
general path, which counts each of its steps.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Final, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import MessageLengthError
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from ..core.datagram import (
    HEADER_SIZE,
    MAX_UDP_PAYLOAD,
    SERVER_KINDS,
    DropReason,
    encode_datagram,
    encode_error_datagram,
    parse_datagram,
)
from ..core.spf1 import ErrorCode, Kind
from ..request import Request, normalize_peer
from ..serving.answering import HandlerTimeout, call_handler, failure_message, limit_time
from .cache import IN_PROGRESS
from .sending import Address, ReplyingProtocol

if TYPE_CHECKING:
    from .server import DatagramServerFactory

__all__ = ["DatagramServerProtocol"]

_PING: Final = int(Kind.PING)
_PONG: Final = int(Kind.PONG)
_RESPONSE: Final = int(Kind.RESPONSE)
_CODE: Final = struct.Struct(">H")
_DROP_EVENTS: Final = {reason: f"dropped_{reason.value}" for reason in DropReason}
_PEERS_KEPT: Final = 4096  # sender addresses whose handler view is kept (then all are forgotten)


def _anyone(host: str) -> bool:
    """Every source is verified: the amplification guard is off."""
    return True


class DatagramServerProtocol(ReplyingProtocol):
    """Serve one UDP socket for a :class:`~sockproto.datagram.server.DatagramServerFactory`.

    The settings are read from the factory when the protocol is built.  Listen with a
    65536-byte read size (``maxPacketSize``), as :mod:`sockproto.datagram.endpoints`
    does, or datagrams over Twisted's default 8192 bytes are cut without notice.

    :ivar cache: this socket's :class:`~sockproto.datagram.cache.ReplyCache`.
    :ivar stats: the service's :class:`~sockproto.datagram.stats.DatagramStats`.
    """

    _log = Logger()

    def __init__(self, factory: DatagramServerFactory) -> None:
        super().__init__()
        self.factory = factory
        self.handler = factory.handler
        self.mode = factory.mode
        self.max_datagram = factory.max_datagram
        self.max_pending = factory.max_pending
        self.handler_timeout = factory.handler_timeout
        self.stats = factory.stats
        self.limiter = factory.limiter
        self.cache = factory.make_cache()
        self._raw = factory.mode == "raw"
        self._rate = factory.rate_limit
        self._verifier = factory.verifier
        self._is_verified = factory.verifier.is_verified if factory.verifier is not None else _anyone
        # An answer up to this many times its request goes to anyone, with no lookup.
        self._amplification = factory.amplification or MAX_UDP_PAYLOAD
        # The largest handler answer that fits in one reply datagram.
        self._max_answer = self.max_datagram - (0 if self._raw else HEADER_SIZE)
        self._pending: set[Deferred[bytes]] = set()
        self._peers: dict[Address, IAddress] = {}
        self._closed = False

    @property
    def pending(self) -> int:
        """Handlers running now."""
        return len(self._pending)

    # -- DatagramProtocol -------------------------------------------------------------

    def startProtocol(self) -> None:
        self._closed = False
        self.factory.protocols.add(self)
        super().startProtocol()

    def stopProtocol(self) -> None:
        super().stopProtocol()
        self.factory.protocols.discard(self)
        self.abort()
        self.cache.clear()
        self._peers.clear()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if self._rate is not None and not self._rate.allow(addr[0]):
            self._count_received(len(datagram))
            self._dropped(DropReason.RATE_LIMITED, addr)
            return
        try:
            peer = self._peers[addr]
        except KeyError:
            peer = self._new_peer(addr)
        if self._raw:
            self._serve(Request(None, None, datagram, (), None, peer), addr, None, len(datagram))
            return
        frame = parse_datagram(datagram, SERVER_KINDS, Request)
        if type(frame) is not Request:
            self._count_received(len(datagram))
            self._dropped(cast(DropReason, frame), addr)
            return
        frame.peer = peer
        if frame.kind == _PING:
            self._count_received(len(datagram))
            self.stats.pings += 1
            if self._verifier is not None and frame.payload.startswith(b"cookie="):
                self._verifier.redeem(addr[0], frame.payload)
            self._send(self._framed(frame, _PONG, frame.payload), addr)
            return
        key = (addr, frame.id)
        cached = self.cache.lookup(key)
        if cached is None:
            self._serve(frame, addr, key, len(datagram))
            return
        self._count_received(len(datagram))
        if cached is IN_PROGRESS:
            self._dropped(DropReason.IN_PROGRESS, addr)
        else:
            self.stats.cache_hits += 1
            reply = self._guard(cast(bytes, cached), addr, len(datagram), frame)
            if reply is not None:
                self._send(reply, addr)

    def _new_peer(self, addr: Address) -> IAddress:
        """Build (and remember) the handler's view of sender ``addr``."""
        if len(self._peers) >= _PEERS_KEPT:
            self._peers.clear()
        host, port = addr[0], addr[1]
        peer: IAddress
        if ":" in host:
            peer = normalize_peer(IPv6Address("UDP", host, port))
        else:
            peer = IPv4Address("UDP", host, port)
        self._peers[addr] = peer
        return peer

    # -- shutdown ---------------------------------------------------------------------

    def stop_reading(self) -> None:
        """Read no more datagrams (the socket stays open for the replies still owed)."""
        stop = getattr(self.transport, "stopReading", None)
        if stop is not None:
            stop()

    def abort(self) -> None:
        """Cancel every handler still running: their answers will not be sent."""
        self._closed = True
        pending, self._pending = self._pending, set()
        for d in pending:
            d.cancel()

    # -- serving ----------------------------------------------------------------------

    def _serve(self, request: Request, addr: Address, key: Hashable | None, size: int) -> None:
        """Run the handler for a ``size``-byte datagram; reply now, or when its Deferred fires.

        ``key`` is the request's reply-cache key (``None`` in raw mode).
        """
        if len(self._pending) >= self.max_pending:
            self._count_received(size)
            self._dropped(DropReason.OVERLOADED, addr)
            return
        result: object
        try:
            result = self.handler(request)
        except Exception:
            result = Failure()
        else:
            # The fast path: bytes that fit, for a source that may have them, sent at
            # once and counted once.
            if type(result) is bytes and len(result) <= self._max_answer:
                reply = result if self._raw else encode_datagram(_RESPONSE, request.id or 0, result)
                if len(reply) <= self._amplification * size or self._is_verified(addr[0]):
                    if key is not None:
                        self.cache.store(key, reply)
                    stats = self.stats
                    try:
                        self._sendto(reply, addr)
                    except (OSError, MessageLengthError) as e:
                        self._count_received(size, request=True)
                        stats.answers += 1
                        self._send_failed(reply, addr, e)
                    else:
                        stats.served += 1
                        stats.bytes_in += size
                        stats.bytes_out += len(reply)
                    return
        self._count_received(size, request=True)
        if isinstance(result, Failure):
            self._reply(result, request, addr, key, size)
        else:
            self._answer(result, request, addr, key, size)

    def _answer(
        self, result: object, request: Request, addr: Address, key: Hashable | None, size: int
    ) -> None:
        """Reply to what the handler returned, now or when its Deferred fires."""
        if type(result) is not bytes:
            try:
                result = call_handler(lambda _request: result, request)  # type: ignore[arg-type, return-value]
            except TypeError:
                self._reply(Failure(), request, addr, key, size)
                return
            if isinstance(result, Deferred):
                if key is not None:
                    self.cache.begin(key)
                self._pending.add(result)
                self.stats.in_flight += 1
                if self.handler_timeout is not None:
                    limit_time(result, self.handler_timeout, self.factory._clock())
                result.addBoth(self._answered, request, addr, key, size, result)
                return
        assert type(result) is bytes
        self._reply(result, request, addr, key, size)

    def _answered(
        self,
        result: bytes | Failure,
        request: Request,
        addr: Address,
        key: Hashable | None,
        size: int,
        d: Deferred[bytes],
    ) -> None:
        self._pending.discard(d)
        self.stats.in_flight -= 1
        if self._closed:
            self.stats.abandoned += 1  # the socket is closed, or the drain gave up: no reply
            return None
        if key is not None:
            self.cache.finish(key, None)
        self._reply(result, request, addr, key, size)
        if self.factory.draining and not self._pending:
            self.factory.check_drained()
        return None

    def _reply(
        self, result: bytes | Failure, request: Request, addr: Address, key: Hashable | None, size: int
    ) -> None:
        """Send (and, in SPF/1 mode, cache) the reply to ``result``; count its outcome."""
        stats = self.stats
        if self._raw:
            if isinstance(result, Failure):
                stats.error(self._handler_failed(result, request)[0])
                stats.drop(DropReason.HANDLER_FAILED)
            elif len(result) > self.max_datagram:
                self._note(
                    "answer_too_large", LogLevel.error, request, size=len(result), limit=self.max_datagram
                )
                stats.error(ErrorCode.TOO_LARGE)
                stats.drop(DropReason.ANSWER_TOO_LARGE)
            elif len(result) > self._amplification * size and not self._verified(addr):
                self._note("amplification", LogLevel.warn, request, size=len(result), limit=size)
                stats.guarded += 1
                stats.error(ErrorCode.TOO_LARGE)
                stats.drop(DropReason.AMPLIFICATION)
            else:
                stats.answers += 1
                self._send(result, addr)
            return
        if isinstance(result, Failure):
            code, message = self._handler_failed(result, request)
            reply = encode_error_datagram(request.id or 0, code, message, self.max_datagram)
        else:
            reply = self._framed(request, _RESPONSE, result)
        if key is not None:
            self.cache.store(key, reply)
        sent = self._guard(reply, addr, size, request)
        if sent is None:
            stats.error(ErrorCode.TOO_LARGE)
            return
        if sent[3] == _RESPONSE:
            stats.answers += 1
        else:
            stats.error(ErrorCode(_CODE.unpack_from(sent, HEADER_SIZE)[0]))
        self._send(sent, addr)

    def _framed(self, request: Request, kind: int, payload: bytes) -> bytes:
        """One SPF/1 datagram, or ERROR 2 if ``payload`` makes it too big."""
        ident = request.id or 0
        if len(payload) + HEADER_SIZE <= self.max_datagram:
            return encode_datagram(kind, ident, payload)
        message = (
            f"answer of {len(payload)} bytes does not fit in a {self.max_datagram}-byte datagram "
            f"with its {HEADER_SIZE}-byte header"
        )
        self._note("answer_too_large", LogLevel.error, request, size=len(payload), limit=self.max_datagram)
        return encode_error_datagram(ident, ErrorCode.TOO_LARGE, message, self.max_datagram)

    def _guard(self, reply: bytes, addr: Address, size: int, request: Request) -> bytes | None:
        """``reply``, or an ERROR 2 with a cookie if it is too big for an unverified source.

        ``None`` (dropped, counted ``amplification``) when even that ERROR would be too big.
        """
        if len(reply) <= self._amplification * size or self._verified(addr):
            return reply
        assert self._verifier is not None
        self.stats.guarded += 1
        self._note("amplification", LogLevel.warn, request, size=len(reply), limit=size)
        cookie = self._verifier.cookie(addr[0]).decode("ascii")
        limit = min(self.max_datagram, self._amplification * size)
        if limit < HEADER_SIZE + 2 + len(cookie):
            self.stats.drop(DropReason.AMPLIFICATION)
            return None
        message = (
            f"{cookie}; the answer ({len(reply)} bytes) is over {self._amplification} times the request "
            f"({size} bytes) and this source is not verified: PING with the cookie as payload, then retry"
        )
        return encode_error_datagram(request.id or 0, ErrorCode.TOO_LARGE, message, limit)

    def _verified(self, addr: Address) -> bool:
        """Whether ``addr`` may get an answer of any size (always, without a guard)."""
        return self._is_verified(addr[0])

    def _handler_failed(self, failure: Failure, request: Request) -> tuple[ErrorCode, str]:
        """Log a handler failure or timeout; return the error code and message it gets."""
        if failure.check(HandlerTimeout):
            self.limiter.emit(
                self._log, "handler_timeout", LogLevel.warn, "request from {peer}: {message}",
                peer=request.peer, message=failure.getErrorMessage(), service="datagram",
            )  # fmt: skip
            return ErrorCode.TIMEOUT, failure.getErrorMessage()
        self.limiter.failure(
            self._log, "handler_failed", "handler {handler!r} failed for {peer}", failure,
            handler=self.handler, peer=request.peer, service="datagram",
        )  # fmt: skip
        return ErrorCode.HANDLER_FAILED, failure_message(failure)

    def _note(self, category: str, level: LogLevel, request: Request, **fields: Any) -> None:
        """Log an answer that could not be sent as it was (rate-limited)."""
        what = "over the datagram limit" if category == "answer_too_large" else "over the amplification limit"
        self.limiter.emit(
            self._log, category, level,
            "an answer of {size} bytes to {peer} is " + what + " ({limit} bytes of request or datagram)",
            peer=request.peer, service="datagram", **fields,
        )  # fmt: skip

    def _dropped(self, reason: DropReason, addr: Address) -> None:
        """Count (and log, rate-limited) a datagram dropped without a reply."""
        self.stats.drops[reason] += 1
        category = _DROP_EVENTS[reason]
        if self.limiter.admit(category):  # a flood costs a count, not a log event each
            self.limiter.log(
                self._log, category, LogLevel.info, "dropped a datagram from {addr}: {reason}",
                addr=addr, reason=str(reason), service="datagram",
            )  # fmt: skip

    def _count_received(self, size: int, request: bool = False) -> None:
        """Count a ``size``-byte datagram received (and given to the handler if ``request``)."""
        stats = self.stats
        stats.received += 1
        stats.bytes_in += size
        if request:
            stats.requests += 1

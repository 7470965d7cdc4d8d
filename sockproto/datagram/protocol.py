"""The datagram server's protocol: one UDP socket, served for its service.

See :mod:`sockproto.datagram.server` for the behaviour.  The rules (what a datagram
gets) are the sans-IO :class:`~sockproto.core.datagram_server.DatagramRules`; this
adapter reads the socket, calls the handler through the service's
:class:`~sockproto.serving.answering.Answering`, sends and logs.  It knows its service
only by the :class:`~sockproto.datagram.settings.DatagramShared` it was given.

The common case is kept short: a synchronous handler whose answer may go back at once
is answered from :meth:`~DatagramServerProtocol.datagramReceived` with one ``sendto``
and counted once (:attr:`~sockproto.datagram.stats.DatagramStats.served`), the rules'
answer inlined (the same outcome as :meth:`~sockproto.core.datagram_server.DatagramRules.answer`);
anything else takes the general path, which counts each of its steps.
"""

from __future__ import annotations

from typing import Any, Final, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import MessageLengthError
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from ..core.datagram import DropReason, encode_datagram
from ..core.datagram_cache import ReplyCache
from ..core.datagram_server import DatagramRules
from ..core.spf1 import ErrorCode, Kind
from ..request import Request, normalize_peer
from .sending import Address, ReplyingProtocol
from .settings import DatagramSettings, DatagramShared

__all__ = ["DatagramServerProtocol"]

_RESPONSE: Final = int(Kind.RESPONSE)
_DROP_EVENTS: Final = {reason: f"dropped_{reason.value}" for reason in DropReason}
_PEERS_KEPT: Final = 4096  # sender addresses whose handler view is kept (then all are forgotten)


class _Peers(dict[Address, IAddress]):
    """The handler's view of each sender address, built on first use (bounded)."""

    def __missing__(self, addr: Address) -> IAddress:
        if len(self) >= _PEERS_KEPT:
            self.clear()
        host, port = addr[0], addr[1]
        peer: IAddress
        if ":" in host:
            peer = normalize_peer(IPv6Address("UDP", host, port))
        else:
            peer = IPv4Address("UDP", host, port)
        self[addr] = peer
        return peer


class DatagramServerProtocol(ReplyingProtocol):
    """Serve one UDP socket of a datagram service.

    Listen with a 65536-byte read size (``maxPacketSize``), as
    :mod:`sockproto.datagram.endpoints` does, or datagrams over Twisted's default 8192
    bytes are cut without notice.

    :param shared: the service's :class:`~sockproto.datagram.settings.DatagramShared`.
    :ivar settings: the service's settings this socket applies (its ``shared.settings``,
        followed on each datagram).
    :ivar rules: this socket's :class:`~sockproto.core.datagram_server.DatagramRules`.
    :ivar cache: this socket's reply cache.
    :ivar stats: the service's :class:`~sockproto.datagram.stats.DatagramStats`.
    """

    _log = Logger()

    def __init__(self, shared: DatagramShared) -> None:
        super().__init__()
        self.shared = shared
        self.stats = cast(Any, shared.settings.metrics)
        self.limiter = shared.settings.limiter
        self._calls: set[Deferred[Any]] = set()
        self._peers = _Peers()
        self._closed = False
        settings = shared.settings
        clock = settings.clock
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.cache = ReplyCache(clock)
        self._configure(settings)

    def _configure(self, settings: DatagramSettings) -> None:
        """Apply ``settings`` (at start, and whenever the service's settings change)."""
        self.settings = settings
        self.handler = settings.handler
        self.answering = settings.answering
        cache = self.cache
        cache.max_entries, cache.max_bytes, cache.max_age = (
            settings.cache_entries, settings.cache_bytes, settings.cache_age,
        )  # fmt: skip
        self.rules = DatagramRules(
            mode=settings.mode,
            max_datagram=settings.max_datagram,
            max_pending=settings.max_pending,
            amplification=settings.amplification,
            rate=settings.rate,
            verifier=settings.verifier,
            cache=cache,
            stats=self.stats,
            peers=self._peers,
            request_type=Request,
            note=self._note,
        )

    @property
    def pending(self) -> int:
        """Handlers of this socket running now (at most ``max_pending``)."""
        return len(self._calls)

    # -- DatagramProtocol -------------------------------------------------------------

    def startProtocol(self) -> None:
        self._closed = False
        self.shared.sockets.add(self)
        super().startProtocol()
        if not self.shared.reading:
            self.stop_reading()

    def stopProtocol(self) -> None:
        super().stopProtocol()
        self.shared.sockets.discard(self)
        self._closed = True  # the answers still owed are abandoned
        calls, self._calls = self._calls, set()
        for d in calls:
            d.cancel()
        self.cache.clear()
        self._peers.clear()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if self.shared.settings is not self.settings:
            self._configure(self.shared.settings)
        rules = self.rules
        request = rules.receive(datagram, addr, len(self._calls))
        if type(request) is not Request:
            if type(request) is bytes:
                self._send(request, addr)
            elif request is not None:
                self._dropped(request, addr)
            return
        size = len(datagram)
        result: object
        try:
            result = self.handler(request)
        except Exception:
            result = Failure()
        else:
            # The fast path: bytes that fit, for a source that may have them, sent at
            # once and counted once (what rules.answer decides, inlined).
            if type(result) is bytes and len(result) <= rules.max_answer:
                raw = rules.raw
                reply = result if raw else encode_datagram(_RESPONSE, request.id or 0, result)
                if len(reply) <= rules.amplification * size or rules.is_verified(addr[0]):
                    if not raw:
                        rules.cache.store((addr, request.id), reply)
                    stats = self.stats
                    try:
                        self._sendto(reply, addr)
                    except (OSError, MessageLengthError) as e:
                        self._count_request(size)
                        stats.answers += 1
                        self._send_failed(reply, addr, e)
                    else:
                        stats.served += 1
                        stats.bytes_in += size
                        stats.bytes_out += len(reply)
                    return
        self._count_request(size)
        if not isinstance(result, Failure):
            rules.begin(request, addr)  # before: a Deferred may fire at once
            try:
                result = self.answering.start(
                    result, self.shared.pending, self._answered, request, addr, size
                )
            except TypeError:
                result = Failure()
            else:
                if type(result) is not bytes:
                    d = cast("Deferred[Any]", result)
                    self._calls.add(d)
                    d.addBoth(self._left, d)
                    return
        self._reply(result, request, addr, size)

    # -- shutdown ---------------------------------------------------------------------

    def stop_reading(self) -> None:
        """Read no more datagrams (the socket stays open for the replies still owed)."""
        stop = getattr(self.transport, "stopReading", None)
        if stop is not None:
            stop()

    # -- serving ----------------------------------------------------------------------

    def _answered(self, result: bytes | Failure, request: Request, addr: Address, size: int) -> None:
        """A handler's Deferred fired (after it left the service's pending work).

        Cancelled from outside (the socket closed, or the service's drain gave up and
        aborted it: ``CancelledError``, not a timeout), its answer is abandoned.
        """
        if self._closed or (isinstance(result, Failure) and result.check(CancelledError)):
            self.stats.abandoned += 1  # the socket is closed, or the drain gave up: no reply
            self.rules.abandon(request, addr)
            return None
        self._reply(result, request, addr, size)
        return None

    def _left(self, result: object, d: Deferred[Any]) -> object:
        """``d``'s call is over (its answer was dealt with)."""
        self._calls.discard(d)
        return result

    def _reply(self, result: bytes | Failure, request: Request, addr: Address, size: int) -> None:
        """Send (and, in SPF/1 mode, cache) the reply to ``result``; count its outcome."""
        answer: bytes | tuple[ErrorCode, str] = (
            self.answering.failed(result, request.peer) if isinstance(result, Failure) else result
        )
        reply = self.rules.answer(request, addr, size, answer)
        if reply is not None:
            self._send(reply, addr)

    def _note(self, category: str, request: Any, size: int, limit: int) -> None:
        """Log an answer that could not be sent as it was (rate-limited)."""
        level = LogLevel.error if category == "answer_too_large" else LogLevel.warn
        what = "over the datagram limit" if category == "answer_too_large" else "over the amplification limit"
        self.limiter.emit(
            self._log, category, level,
            "an answer of {size} bytes to {peer} is " + what + " ({limit} bytes of request or datagram)",
            peer=request.peer, service="datagram", size=size, limit=limit,
        )  # fmt: skip

    def _dropped(self, reason: DropReason, addr: Address) -> None:
        """Log (rate-limited) a datagram the rules dropped without a reply."""
        category = _DROP_EVENTS[reason]
        if self.limiter.admit(category):  # a flood costs a count, not a log event each
            self.limiter.log(
                self._log, category, LogLevel.info, "dropped a datagram from {addr}: {reason}",
                addr=addr, reason=str(reason), service="datagram",
            )  # fmt: skip

    def _count_request(self, size: int) -> None:
        """Count a ``size``-byte datagram received and given to the handler."""
        stats = self.stats
        stats.received += 1
        stats.bytes_in += size
        stats.requests += 1

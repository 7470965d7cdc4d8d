"""The UDP datagram server: one datagram in, at most one datagram out.

:class:`DatagramServerFactory` holds what one service shares: the handler, the
configuration and the :class:`~sockproto.datagram.stats.DatagramStats`.  It builds a
:class:`DatagramServerProtocol` for each socket the service listens on (a
``DatagramProtocol`` serves one socket), each with its own reply cache.

Two modes:

``spf1`` (the default)
    A datagram is one whole SPF/1 frame.  One whose length field does not match its
    size, that is not SPF/1, shorter than a header or of a kind other than REQUEST and
    PING is dropped without a reply (answering garbage on UDP makes a reflector) and
    counted.  A REQUEST gets a RESPONSE, a PING a PONG, a handler exception ERROR 4, an
    answer too big for one datagram ERROR 2.  A repeated (peer, id) is answered from the
    reply cache, or dropped while its handler still runs.
``raw``
    Each datagram is a request, and the handler's answer is the reply datagram.  An
    answer too big for one datagram, or a failed handler, is logged, counted and dropped.

Handlers see IPv4 peers of a dual-stack socket as plain IPv4, while the reply goes to
the address as the socket reported it (Twisted's UDP ``write`` only takes literals of
the socket's own family).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Final, Literal, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import MessageLengthError
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..answering import call_handler
from ..core.datagram import (
    HEADER_SIZE,
    MAX_UDP_PAYLOAD,
    MIN_DATAGRAM,
    SERVER_KINDS,
    DropReason,
    encode_datagram,
    encode_error_datagram,
    parse_datagram,
)
from ..core.spf1 import ErrorCode, Kind
from ..handlers import Handler
from ..request import Request, normalize_peer
from .cache import DEFAULT_CACHE_AGE, DEFAULT_CACHE_BYTES, DEFAULT_CACHE_ENTRIES, IN_PROGRESS, ReplyCache
from .stats import DatagramStats

__all__ = [
    "DEFAULT_MAX_PENDING",
    "MODES",
    "DatagramServerFactory",
    "DatagramServerProtocol",
    "Mode",
]

Mode = Literal["spf1", "raw"]
MODES: Final[tuple[Mode, ...]] = ("spf1", "raw")
"""The wire modes: SPF/1 datagrams, or bare payloads."""

DEFAULT_MAX_PENDING: Final = 1024
"""Handlers allowed to run at once per socket; datagrams past that are dropped."""

_PING: Final = int(Kind.PING)
_PONG: Final = int(Kind.PONG)
_RESPONSE: Final = int(Kind.RESPONSE)
_PEERS_KEPT: Final = 4096  # sender addresses whose handler view is kept (then all are forgotten)
_Address = tuple[str, int]


class DatagramServerFactory:
    """One datagram service: handler, configuration and counters, shared by its sockets.

    :param handler: called with a :class:`~sockproto.request.Request` per request.
    :param mode: ``"spf1"`` or ``"raw"``.
    :param max_datagram: the largest reply sent, header included (at most 65507).
    :param max_pending: handlers running at once per socket; more datagrams are dropped.
    :param cache_entries: replies kept per socket for retransmissions (SPF/1 mode).
    :param cache_bytes: reply bytes kept per socket.
    :param cache_age: seconds a reply is kept.
    :param clock: the reactor whose time ages the cache (the global reactor by default).
    :ivar stats: the service's :class:`~sockproto.datagram.stats.DatagramStats`.
    :ivar protocols: the protocols serving a socket now.
    :raises ValueError: for a setting out of range.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        mode: Mode = "spf1",
        max_datagram: int = MAX_UDP_PAYLOAD,
        max_pending: int = DEFAULT_MAX_PENDING,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        cache_age: float = DEFAULT_CACHE_AGE,
        clock: IReactorTime | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if not MIN_DATAGRAM <= max_datagram <= MAX_UDP_PAYLOAD:
            raise ValueError(
                f"max_datagram must be between {MIN_DATAGRAM} and {MAX_UDP_PAYLOAD} bytes, not {max_datagram}"
            )
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, not {max_pending}")
        if cache_entries < 0 or cache_bytes < 0 or cache_age < 0:
            raise ValueError("the reply cache's bounds must not be negative")
        self.handler = handler
        self.mode: Mode = mode
        self.max_datagram = max_datagram
        self.max_pending = max_pending
        self.cache_entries = cache_entries
        self.cache_bytes = cache_bytes
        self.cache_age = cache_age
        self.clock = clock
        self.stats = DatagramStats()
        self.protocols: set[DatagramServerProtocol] = set()

    def buildProtocol(self, addr: IAddress | None = None) -> DatagramServerProtocol:
        """Return a new protocol to serve one socket of this service."""
        return DatagramServerProtocol(self)

    def make_cache(self) -> ReplyCache:
        """Return a new, empty reply cache with this service's bounds."""
        return ReplyCache(
            self._clock(), max_entries=self.cache_entries, max_bytes=self.cache_bytes, max_age=self.cache_age
        )

    def _clock(self) -> IReactorTime:
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = cast(IReactorTime, reactor)
        return self.clock


class DatagramServerProtocol(DatagramProtocol):
    """Serve one UDP socket for a :class:`DatagramServerFactory`.

    The settings are read from the factory when the protocol is built.  Listen with a
    65536-byte read size (``maxPacketSize``), as :mod:`sockproto.datagram.endpoints`
    does, or datagrams over Twisted's default 8192 bytes are cut without notice.

    :ivar cache: this socket's :class:`~sockproto.datagram.cache.ReplyCache`.
    """

    _log = Logger()

    def __init__(self, factory: DatagramServerFactory) -> None:
        self.factory = factory
        self.handler = factory.handler
        self.mode = factory.mode
        self.max_datagram = factory.max_datagram
        self.max_pending = factory.max_pending
        self.stats = factory.stats
        self.cache = factory.make_cache()
        self._raw = factory.mode == "raw"
        self._pending: set[Deferred[bytes]] = set()
        self._peers: dict[_Address, IAddress] = {}
        self._closed = False

    @property
    def pending(self) -> int:
        """Handlers running now."""
        return len(self._pending)

    # -- DatagramProtocol -------------------------------------------------------------

    def startProtocol(self) -> None:
        self._closed = False
        self.factory.protocols.add(self)

    def stopProtocol(self) -> None:
        self._closed = True
        self.factory.protocols.discard(self)
        pending, self._pending = self._pending, set()
        for d in pending:
            d.cancel()
        self.cache.clear()
        self._peers.clear()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        stats = self.stats
        stats.received += 1
        try:
            peer = self._peers[addr]
        except KeyError:
            peer = self._new_peer(addr)
        if self._raw:
            request = Request(None, None, datagram, (), None, peer)
            if len(self._pending) >= self.max_pending:
                stats.drop(DropReason.OVERLOADED)
                return
            # The hot path, inlined: a plain bytes answer that fits is sent at once.
            stats.handled += 1
            try:
                result = self.handler(request)
            except Exception:
                self._reply(Failure(), request, addr, None)
                return
            if type(result) is bytes and len(result) <= self.max_datagram and self.transport:
                try:
                    self.transport.write(result, addr)
                except (OSError, MessageLengthError) as e:
                    self._send_failed(result, addr, e)
                else:
                    stats.replied += 1
            else:
                self._answer(result, request, addr, None)
            return
        frame = parse_datagram(datagram, SERVER_KINDS, Request)
        if type(frame) is not Request:
            self.stats.drop(cast(DropReason, frame))
            return
        frame.peer = peer
        if frame.kind == _PING:
            self._send(self._framed(frame, _PONG, frame.payload), addr)
            return
        key = (addr, frame.id)
        cached = self.cache.lookup(key)
        if cached is None:
            self._serve(frame, addr, key)
        elif cached is IN_PROGRESS:
            self.stats.drop(DropReason.IN_PROGRESS)
        else:
            self.stats.from_cache += 1
            self._send(cast(bytes, cached), addr)

    def _new_peer(self, addr: _Address) -> IAddress:
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

    # -- serving ----------------------------------------------------------------------

    def _serve(self, request: Request, addr: _Address, key: Hashable | None) -> None:
        """Run the handler; reply now, or when its Deferred fires."""
        if len(self._pending) >= self.max_pending:
            self.stats.drop(DropReason.OVERLOADED)
            return
        self.stats.handled += 1
        try:
            result = self.handler(request)
        except Exception:
            self._reply(Failure(), request, addr, key)
            return
        self._answer(result, request, addr, key)

    def _answer(self, result: object, request: Request, addr: _Address, key: Hashable | None) -> None:
        """Reply to what the handler returned, now or when its Deferred fires."""
        if type(result) is not bytes:
            try:
                result = _settle(result, request)
            except TypeError:
                self._reply(Failure(), request, addr, key)
                return
            if isinstance(result, Deferred):
                if key is not None:
                    self.cache.begin(key)
                self._pending.add(result)
                result.addBoth(self._answered, request, addr, key, result)
                return
        assert type(result) is bytes
        self._reply(result, request, addr, key)

    def _answered(
        self,
        result: bytes | Failure,
        request: Request,
        addr: _Address,
        key: Hashable | None,
        d: Deferred[bytes],
    ) -> None:
        self._pending.discard(d)
        if self._closed:
            return None  # the socket is closed (the Deferred was cancelled): no reply
        if key is not None:
            self.cache.finish(key, None)
        self._reply(result, request, addr, key)
        return None

    def _reply(self, result: bytes | Failure, request: Request, addr: _Address, key: Hashable | None) -> None:
        """Send (and, in SPF/1 mode, cache) the reply to ``result``."""
        if self._raw:
            if isinstance(result, Failure):
                self._handler_failed(result, request)
                self.stats.drop(DropReason.HANDLER_FAILED)
            elif len(result) > self.max_datagram:
                self._log.error(
                    "dropped an answer of {size} bytes to {peer}: over the {limit}-byte datagram limit",
                    size=len(result),
                    peer=request.peer,
                    limit=self.max_datagram,
                )
                self.stats.drop(DropReason.ANSWER_TOO_LARGE)
            else:
                self._send(result, addr)
            return
        if isinstance(result, Failure):
            message = self._handler_failed(result, request)
            reply = encode_error_datagram(
                request.id or 0, ErrorCode.HANDLER_FAILED, message, self.max_datagram
            )
        else:
            reply = self._framed(request, _RESPONSE, result)
        if key is not None:
            self.cache.store(key, reply)
        self._send(reply, addr)

    def _framed(self, request: Request, kind: int, payload: bytes) -> bytes:
        """One SPF/1 datagram, or ERROR 2 if ``payload`` makes it too big."""
        ident = request.id or 0
        if len(payload) + HEADER_SIZE <= self.max_datagram:
            return encode_datagram(kind, ident, payload)
        message = (
            f"answer of {len(payload)} bytes does not fit in a {self.max_datagram}-byte datagram "
            f"with its {HEADER_SIZE}-byte header"
        )
        self._log.error("{message} (request {id} from {peer})", message=message, id=ident, peer=request.peer)
        return encode_error_datagram(ident, ErrorCode.TOO_LARGE, message, self.max_datagram)

    def _handler_failed(self, failure: Failure, request: Request) -> str:
        """Log a handler failure; return the message an ERROR 4 carries."""
        self._log.failure(
            "handler {handler!r} failed for {peer}", failure=failure, handler=self.handler, peer=request.peer
        )
        name = failure.type.__name__ if isinstance(failure.type, type) else str(failure.type)
        return f"handler failed: {name}: {failure.getErrorMessage()}"

    def _send(self, datagram: bytes, addr: _Address) -> None:
        """Write one reply; a failed send is counted, never raised into the reactor."""
        transport = self.transport
        if transport is None:
            self.stats.drop(DropReason.SEND_FAILED)
            return
        try:
            transport.write(datagram, addr)
        except (OSError, MessageLengthError) as e:
            self._send_failed(datagram, addr, e)
        else:
            self.stats.replied += 1

    def _send_failed(self, datagram: bytes, addr: _Address, error: Exception) -> None:
        self.stats.drop(DropReason.SEND_FAILED)
        # Counted; logged at debug level only, since an overload would flood the log.
        self._log.debug(
            "could not send {size} bytes to {addr}: {error}", size=len(datagram), addr=addr, error=error
        )


def _settle(result: object, request: Request) -> bytes | Deferred[bytes]:
    """Bring a handler result other than plain bytes to bytes or a Deferred of bytes.

    :raises TypeError: if it is not bytes-like, a Deferred or a coroutine.
    """
    return call_handler(lambda _request: result, request)  # type: ignore[arg-type, return-value]

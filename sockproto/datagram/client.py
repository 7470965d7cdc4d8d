"""The datagram client: ``request(payload)`` and ``ping()`` over a connected UDP socket.

UDP loses, duplicates and reorders datagrams.  The client sends a request, sends it
again after ``interval``, then after twice that, and so on (exponential backoff)
until an answer comes, ``retries`` copies were sent or the ``timeout`` passes.  In
SPF/1 mode answers are matched by request id, so several requests may be in flight
and a late duplicate answer is ignored; the server's reply cache makes the repeats
safe.  In raw mode there is no id: one request is in flight at a time, the others
wait their turn.

The socket is connected, so the kernel drops datagrams from any other sender, and an
ICMP "port unreachable" fails the requests at once with :class:`PortUnreachable`
instead of letting them time out.

A server's amplification guard answers a large answer to an unverified client with an
ERROR 2 that carries a cookie (:mod:`sockproto.core.datagram_guard`); the client then
returns the cookie in a PING and, once the PONG is back, asks again (once per request),
which gets the answer from the server's reply cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, cast

from twisted.internet.defer import Deferred, DeferredLock, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, MessageLengthError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core.datagram import (
    CLIENT_KINDS,
    COOKIE_PREFIX,
    HEADER_SIZE,
    MAX_UDP_PAYLOAD,
    MODES,
    Mode,
    encode_datagram,
    parse_datagram,
)
from ..core.decoder import Frame
from ..core.header import PayloadTooLarge
from ..core.spf1 import ErrorCode, Kind, decode_error
from ..frame.client import RemoteError, RequestTimeout
from .endpoints import UDPClientEndpoint, udp_client_from_string

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "DatagramClientProtocol",
    "PortUnreachable",
    "RemoteError",
    "RequestTimeout",
    "connect_datagram",
]

DEFAULT_TIMEOUT: Final = 5.0
"""Seconds a request waits for its answer, retransmissions included."""

DEFAULT_RETRIES: Final = 5
"""Copies sent after the first one, at most."""

DEFAULT_INTERVAL: Final = 0.25
"""Seconds before the first retransmission; each later one waits twice as long."""

_ID_LIMIT: Final = 2**32
_ANSWERS: Final = {int(Kind.REQUEST): int(Kind.RESPONSE), int(Kind.PING): int(Kind.PONG)}


class PortUnreachable(ConnectionRefusedError):
    """The server's host answered ICMP "port unreachable": nothing listens on that port."""

    def __init__(self, message: str = "nothing listens on the server's port") -> None:
        super().__init__(string=message)  # type: ignore[no-untyped-call]


class _Waiter:
    """One request waiting for its answer."""

    __slots__ = ("d", "datagram", "deadline", "delay", "ident", "kind", "left", "retry", "sends", "verifying")

    def __init__(
        self,
        kind: int,
        ident: int,
        datagram: bytes,
        retries: int,
        delay: float,
        forget: Callable[[_Waiter], None],
    ) -> None:
        self.kind = kind
        self.ident = ident
        self.datagram = datagram
        self.left = retries
        self.delay = delay
        self.sends = 0
        self.verifying = 0  # the amplification guard's cookie: 1 returned, 2 accepted
        self.d: Deferred[bytes] = Deferred(lambda d: forget(self))
        self.retry: IDelayedCall | None = None
        self.deadline: IDelayedCall | None = None

    def stop_timers(self) -> None:
        for call in (self.retry, self.deadline):
            if call is not None and call.active():
                call.cancel()
        self.retry = self.deadline = None


class DatagramClientProtocol(DatagramProtocol):
    """Send requests from a connected UDP socket and match their answers.

    :param mode: ``"spf1"`` or ``"raw"``; it must match the server's.
    :param timeout: default seconds a request waits for its answer.
    :param retries: default number of retransmissions at most.
    :param interval: seconds before the first retransmission, doubled for each next one.
    :param max_datagram: the largest request datagram sent.
    :param clock: the reactor used for timers (the global reactor by default).
    :ivar sent: datagrams sent, retransmissions included.
    :ivar ignored: datagrams received that answered nothing waiting (late duplicates,
        answers to abandoned requests, or not valid SPF/1 answers).
    """

    _log = Logger()

    def __init__(
        self,
        *,
        mode: Mode = "spf1",
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        interval: float = DEFAULT_INTERVAL,
        max_datagram: int = MAX_UDP_PAYLOAD,
        clock: IReactorTime | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval!r}")
        self.mode: Mode = mode
        self.timeout = timeout
        self.retries = retries
        self.interval = interval
        self.max_datagram = max_datagram
        self.sent = 0
        self.ignored = 0
        self._clock = clock
        self._raw = mode == "raw"
        self._waiting: dict[int, _Waiter] = {}  # by id; raw mode: the one in flight, as id 0
        self._lock = DeferredLock()  # raw mode: one request at a time
        self._next_id = 1
        self._closed = False

    # -- the API ----------------------------------------------------------------------

    def request(
        self, payload: bytes, *, timeout: float | None = None, retries: int | None = None
    ) -> Deferred[bytes]:
        """Send ``payload``; the Deferred fires with the answer's payload.

        It fails with :class:`RemoteError` if the server answers ERROR,
        :class:`RequestTimeout` when ``timeout`` passes, :class:`PortUnreachable` if the
        server's host refuses the datagram.  Cancelling it forgets the request.

        :param timeout: seconds to wait (the client's default if ``None``).
        :param retries: retransmissions at most (the client's default if ``None``).
        """
        if self._raw:
            return self._lock.run(self._send, Kind.REQUEST, payload, timeout, retries)
        return self._send(Kind.REQUEST, payload, timeout, retries)

    def ping(
        self, payload: bytes = b"", *, timeout: float | None = None, retries: int | None = None
    ) -> Deferred[bytes]:
        """Send a PING; the Deferred fires with the PONG's payload (``payload`` echoed).

        :raises ValueError: in raw mode, which has no PING.
        """
        if self._raw:
            raise ValueError("raw mode has no PING: send a request")
        return self._send(Kind.PING, payload, timeout, retries)

    def close(self) -> Deferred[None]:
        """Fail what is still waiting, and close the socket."""
        self._closed = True
        self._fail_all(Failure(ConnectionDone("the client was closed")))
        port: Any = self.transport
        if port is None:
            return succeed(None)
        stopped = port.stopListening()
        return stopped if isinstance(stopped, Deferred) else succeed(None)

    @property
    def pending(self) -> int:
        """Requests in flight (raw mode: not counting those waiting their turn)."""
        return len(self._waiting)

    # -- DatagramProtocol -------------------------------------------------------------

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if self._raw:
            waiter = self._waiting.pop(0, None)
            if waiter is None:
                self.ignored += 1  # a late duplicate: its request was answered already
                return
            self._fire(waiter, datagram)
            return
        frame = parse_datagram(datagram, CLIENT_KINDS)
        if not isinstance(frame, Frame):
            self.ignored += 1
            self._log.debug("ignored a datagram from the server: {reason}", reason=frame)
            return
        waiter = self._waiting.get(frame.id or 0)
        if waiter is None or frame.kind not in (_ANSWERS[waiter.kind], Kind.ERROR):
            self.ignored += 1
            return
        if frame.kind == Kind.ERROR:
            try:
                code, message = decode_error(frame.payload)
            except ValueError as e:
                code, message = ErrorCode.PROTOCOL_ERROR, str(e)
            if self._verify(waiter, code, message):
                return
            del self._waiting[waiter.ident]
            self._fire(waiter, Failure(RemoteError(code, message)))
            return
        del self._waiting[waiter.ident]
        self._fire(waiter, frame.payload)

    def connectionRefused(self) -> None:
        """An ICMP "port unreachable" came back: fail what waits, at once."""
        self._fail_all(Failure(PortUnreachable()))

    def stopProtocol(self) -> None:
        self._closed = True
        self._fail_all(Failure(ConnectionDone("the client's socket was closed")))

    # -- internals --------------------------------------------------------------------

    def _send(
        self, kind: Kind, payload: bytes, timeout: float | None, retries: int | None
    ) -> Deferred[bytes]:
        if self._closed or self.transport is None:
            return fail(ConnectionDone("the client is closed"))
        if self._raw:
            ident, datagram = 0, payload
        else:
            if len(self._waiting) >= _ID_LIMIT - 1:
                return fail(RuntimeError("every request id is in use"))
            ident = self._allocate_id()
            datagram = encode_datagram(kind, ident, payload)
        if len(datagram) > self.max_datagram:
            extra = "" if self._raw else f" (with its {HEADER_SIZE}-byte header)"
            limit = self.max_datagram
            return fail(
                PayloadTooLarge(f"a {len(payload)}-byte request{extra} exceeds {limit}-byte datagrams")
            )
        left = self.retries if retries is None else retries
        waiter = _Waiter(int(kind), ident, datagram, left, self.interval, self._forget)
        self._waiting[ident] = waiter
        wait = self.timeout if timeout is None else timeout
        waiter.deadline = self._reactor().callLater(wait, self._time_out, waiter, wait)
        self._transmit(waiter)
        return waiter.d

    def _transmit(self, waiter: _Waiter) -> None:
        """Send the request (again); schedule the next copy while retries are left."""
        waiter.retry = None
        if self._waiting.get(waiter.ident) is not waiter:
            return
        transport: Any = self.transport  # a connected udp.Port: write takes no address
        try:
            self.sent += 1
            waiter.sends += 1
            transport.write(waiter.datagram)
        except (OSError, MessageLengthError) as e:
            self._forget(waiter)
            self._fire(waiter, Failure(e))
            return
        if waiter.left > 0 and self._waiting.get(waiter.ident) is waiter:  # not refused meanwhile
            waiter.left -= 1
            waiter.retry = self._reactor().callLater(waiter.delay, self._transmit, waiter)
            waiter.delay *= 2

    def _verify(self, waiter: _Waiter, code: int, message: str) -> bool:
        """Return the cookie of an amplification guard's ERROR 2, then ask again; whether it was one."""
        cookie = message.partition(";")[0].encode("ascii", "replace")
        if code != ErrorCode.TOO_LARGE or waiter.kind != Kind.REQUEST or not cookie.startswith(COOKIE_PREFIX):
            return False
        if waiter.verifying == 2:
            return False  # verified, and refused again: give up
        if waiter.verifying == 0:
            waiter.verifying = 1
            self.ping(cookie).addCallbacks(lambda _: self._verified(waiter), lambda _: None)
        return True  # an answer to a copy sent before the cookie was returned: ignore it

    def _verified(self, waiter: _Waiter) -> None:
        """The server took the cookie: send the request again, at once."""
        waiter.verifying = 2
        if self._waiting.get(waiter.ident) is waiter:
            transport: Any = self.transport
            self.sent += 1
            waiter.sends += 1
            transport.write(waiter.datagram)

    def _allocate_id(self) -> int:
        """The next free id, from 1 up, wrapping (0 is left for errors about no request)."""
        ident = self._next_id
        while ident in self._waiting:
            ident = ident % (_ID_LIMIT - 1) + 1
        self._next_id = ident % (_ID_LIMIT - 1) + 1
        return ident

    def _fire(self, waiter: _Waiter, outcome: bytes | Failure) -> None:
        waiter.stop_timers()
        if isinstance(outcome, Failure):
            waiter.d.errback(outcome)
        else:
            waiter.d.callback(outcome)

    def _forget(self, waiter: _Waiter) -> None:
        """Stop waiting for ``waiter`` (cancelled, failed): a late answer is then ignored."""
        waiter.stop_timers()
        if self._waiting.get(waiter.ident) is waiter:
            del self._waiting[waiter.ident]

    def _time_out(self, waiter: _Waiter, timeout: float) -> None:
        waiter.deadline = None
        self._forget(waiter)
        copies = "1 copy" if waiter.sends == 1 else f"{waiter.sends} copies"
        self._fire(waiter, Failure(RequestTimeout(f"no answer within {timeout:g} s ({copies} sent)")))

    def _fail_all(self, reason: Failure) -> None:
        waiters = list(self._waiting.values())
        self._waiting.clear()
        for waiter in waiters:
            self._fire(waiter, reason)

    def _reactor(self) -> IReactorTime:
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = cast(IReactorTime, reactor)
        return self._clock


def connect_datagram(
    endpoint: str | UDPClientEndpoint,
    *,
    mode: Mode = "spf1",
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    interval: float = DEFAULT_INTERVAL,
    max_datagram: int = MAX_UDP_PAYLOAD,
    reactor: Any = None,
) -> Deferred[DatagramClientProtocol]:
    """Connect a datagram client; the Deferred fires with it, ready to send.

    :param endpoint: ``udp:host=HOST:port=PORT`` or a :class:`UDPClientEndpoint`.
    :raises ValueError: for a bad endpoint string (naming the bad part).
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    if isinstance(endpoint, str):
        endpoint = udp_client_from_string(reactor, endpoint)
    client = DatagramClientProtocol(
        mode=mode,
        timeout=timeout,
        retries=retries,
        interval=interval,
        max_datagram=max_datagram,
        clock=reactor,
    )
    return endpoint.connect(client)

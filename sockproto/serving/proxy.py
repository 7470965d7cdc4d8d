"""The Twisted side of the PROXY protocol: the peer a header names, who may send one, ``proxy:``.

:mod:`sockproto.core.proxy` parses the header; this module turns it into the
:class:`~twisted.internet.interfaces.IAddress` a handler sees (:func:`proxy_peer`),
says which connections may send a header at all (:func:`peer_allowed`, for
``--proxy-from``), and recognises the ``proxy:`` prefix of a listening endpoint string
(:func:`split_proxy_endpoint`).  :class:`ProxySettings` is the library option a
stream factory takes (``proxy=``), :class:`ProxyEndpoint` wraps one listening endpoint
of a service whose other endpoints take no header (``--listen proxy:...``), and
:class:`ProxyHeaderState` is the state a stream server connection is in until its
header is parsed.

A PROXY header lets its sender claim any client address, so a listener that expects
one must take it only from trusted proxies (the spec: "The receiver SHOULD ensure
proper access filtering so that only trusted proxies are allowed to use this
protocol").  By default that is loopback, as for the datagram guard's trusted sources.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final, Literal

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogLevel

from ..core.datagram_guard import DEFAULT_TRUSTED, parse_network
from ..core.proxy import MAX_V2_LENGTH, ProxyFamily, ProxyHeader, ProxyHeaderParser, ProxyProtocolError
from ..request import normalize_peer

__all__ = [
    "DEFAULT_PROXY_FROM",
    "ProxyHeader",
    "DEFAULT_PROXY_TIMEOUT",
    "PROXY_PREFIX",
    "Network",
    "ProxyEndpoint",
    "ProxyHeaderState",
    "ProxySettings",
    "parse_networks",
    "peer_allowed",
    "proxy_peer",
    "split_proxy_endpoint",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PROXY_FROM: Final = DEFAULT_TRUSTED
"""Where a PROXY header is accepted from by default: loopback (``127.0.0.0/8``, ``::1``)."""

DEFAULT_PROXY_TIMEOUT: Final = 3.0
"""Seconds a connection has, from its opening, to send its whole PROXY header."""

PROXY_PREFIX: Final = "proxy:"
"""What starts a listening endpoint string whose connections begin with a PROXY header."""

_REFUSED_INNER: Final = {
    "ssl": "PROXY before TLS is not supported yet: terminate TLS in the proxy, or listen on plain tcp",
    "tls": "PROXY before TLS is not supported yet: terminate TLS in the proxy, or listen on plain tcp",
    "udp": "PROXY over UDP is not a stream endpoint: proxy: takes a stream endpoint such as tcp:PORT",
    "proxy": "proxy: given twice",
    "haproxy": "haproxy: reads a PROXY header itself: use proxy: alone (proxy:tcp:8750)",
}


def proxy_peer(header: ProxyHeader, real_peer: IAddress) -> IAddress:
    """The peer a handler should see on a connection that began with ``header``.

    For a PROXY command naming an IP client, that client, as a Twisted address of the
    header's transport (TCP, or UDP for a datagram family); an IPv4-mapped IPv6 client
    appears as plain IPv4, as :func:`~sockproto.request.normalize_peer` shows a direct
    one.  Otherwise ``real_peer``: a LOCAL header (the proxy's own health check) or an
    UNKNOWN family says nothing about a client, and a UNIX path names no remote host.

    :param header: the parsed header.
    :param real_peer: the connection's own peer (``transport.getPeer()``).
    """
    source = header.source
    if header.command != "PROXY" or not isinstance(source, tuple):
        return real_peer
    host, port = source
    family = header.family
    kind: Literal["TCP", "UDP"] = "UDP" if family in (ProxyFamily.UDP4, ProxyFamily.UDP6) else "TCP"
    if family in (ProxyFamily.TCP4, ProxyFamily.UDP4):
        return IPv4Address(kind, host, port)
    return normalize_peer(IPv6Address(kind, host, port))


def parse_networks(strings: Iterable[str] = DEFAULT_PROXY_FROM) -> list[Network]:
    """Parse ``--proxy-from`` values: one network (``10.0.0.0/8``) or address each.

    No strings give no network: only UNIX-socket peers are then allowed.

    :raises ValueError: naming the bad value.
    """
    return [parse_network(text) for text in strings]


def peer_allowed(peer: IAddress, networks: Sequence[Network]) -> bool:
    """Whether ``peer`` may start its connection with a PROXY header.

    An IP peer must be in one of ``networks`` (an IPv4-mapped IPv6 peer is checked as
    the IPv4 address it is; an IPv6 zone such as ``%eth0`` is ignored).  A UNIX-socket
    peer is always allowed: only processes on this host can connect to a UNIX socket,
    and its file permissions already say which.  Any other kind of address is refused.
    """
    if isinstance(peer, UNIXAddress):
        return True
    if not isinstance(peer, IPv4Address | IPv6Address):
        return False
    try:
        address = ipaddress.ip_address(peer.host)  # keeps a zone: membership ignores it
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def split_proxy_endpoint(description: str) -> tuple[bool, str]:
    """Split ``proxy:`` off a listening endpoint string.

    ``"proxy:tcp:8750:interface=127.0.0.1"`` gives ``(True, "tcp:8750:interface=127.0.0.1")``:
    the connections of that endpoint start with a PROXY header.  Any other string is
    returned as it is, with ``False``.  The prefix is matched in any case, as Twisted
    matches endpoint plugin names.

    :raises ValueError: for ``proxy:`` with no endpoint after it, before TLS (``ssl:``,
        ``tls:``: the header comes before the TLS handshake on the wire, which is not
        supported yet), over ``udp:``, or twice.
    """
    if description[: len(PROXY_PREFIX)].lower() != PROXY_PREFIX:
        return False, description
    inner = description[len(PROXY_PREFIX) :]
    if not inner.strip():
        raise ValueError(f"{description!r}: proxy: needs an endpoint after it, such as proxy:tcp:8750")
    reason = _REFUSED_INNER.get(inner.partition(":")[0].strip().lower())
    if reason is not None:
        raise ValueError(f"{description!r}: {reason}")
    return True, inner


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """Every connection starts with a PROXY header: who may send it, how long it may take.

    :ivar networks: the peers allowed to send a header (``--proxy-from``): networks or
        addresses, as :func:`parse_networks` takes them; loopback by default.
    :ivar timeout: seconds from the connection's opening to the end of its header.
    :ivar max_length: the longest v2 header accepted (see
        :class:`~sockproto.core.proxy.ProxyHeaderParser`).
    :ivar allowed: ``networks`` parsed (derived, not given).
    :raises ValueError: for a bad network, a timeout that is not positive, a bad ``max_length``.
    """

    networks: Sequence[str | Network] = DEFAULT_PROXY_FROM
    timeout: float = DEFAULT_PROXY_TIMEOUT
    max_length: int = MAX_V2_LENGTH
    allowed: tuple[Network, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.networks, str):
            raise ValueError(f"networks must be a sequence of networks, not the string {self.networks!r}")
        allowed = tuple(n if not isinstance(n, str) else parse_networks([n])[0] for n in self.networks)
        if not self.timeout > 0:
            raise ValueError(f"the PROXY header timeout must be positive, not {self.timeout}")
        ProxyHeaderParser(max_length=self.max_length)  # checks it
        object.__setattr__(self, "networks", tuple(self.networks))
        object.__setattr__(self, "allowed", allowed)


class ProxyEndpoint:
    """A listening endpoint whose connections start with a PROXY header (``proxy:ENDPOINT``).

    :meth:`listen` listens on ``inner`` with a :class:`_ProxyListener`: the factory's own
    protocols, built by the factory's own ``buildProtocol`` (so admitted, counted and
    drained with the service's other connections), given ``proxy`` in their settings.
    No ``ProtocolWrapper``: the protocol that reads the header is the one that serves.

    :param inner: the endpoint listened on (``tcp:8750``, ``unix:/run/frame.sock``...).
    :param proxy: who may send a header, and how long it may take.
    """

    def __init__(self, inner: Any, proxy: ProxySettings) -> None:
        self.inner = inner
        self.proxy = proxy

    def listen(self, factory: Any) -> Deferred[Any]:
        """Listen on the inner endpoint; every connection must start with a PROXY header."""
        listening: Deferred[Any] = self.inner.listen(_ProxyListener(factory, self.proxy))
        return listening


class _ProxyListener(Factory):
    """What a :class:`ProxyEndpoint` listens with: ``factory``'s protocols, expecting a header.

    A stream server protocol built by ``factory`` gets ``factory.settings`` with
    ``proxy`` set (one copy, made again only when the factory's settings change);
    anything else it builds (a refusal) is returned as it is.
    """

    def __init__(self, factory: Any, proxy: ProxySettings) -> None:
        self.factory = factory
        self.proxy = proxy
        self.noisy = getattr(factory, "noisy", True)
        self._given: Any = None  # the factory's settings last copied
        self._copy: Any = None

    def logPrefix(self) -> str:  # Twisted's name
        prefix: str = self.factory.logPrefix()
        return prefix

    def doStart(self) -> None:
        self.factory.doStart()

    def doStop(self) -> None:
        self.factory.doStop()

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        proto: Protocol | None = self.factory.buildProtocol(addr)
        if isinstance(proto, ProxyHeaderState):
            given = self.factory.settings
            if given is not self._given:
                self._given, self._copy = given, _replace_proxy(given, self.proxy)
            proto.settings = self._copy
        return proto


def _replace_proxy(settings: Any, proxy: ProxySettings) -> Any:
    return replace(settings, proxy=proxy)


class ProxyHeaderState:
    """The PROXY_HEADER state of a stream server connection, which it leaves once the header is parsed.

    A base of :class:`~sockproto.serving.stream.StreamServerProtocol`.  A service's
    protocol calls :meth:`_proxy_begin` from ``connectionMade`` when its settings have
    a :class:`ProxySettings`, and while :attr:`_proxy` is not ``None`` gives what it
    reads to :meth:`_proxy_data`, which hands back the bytes after the header once it
    is whole: nothing reaches the service's decoder or handler before.  A connection
    on a listener without PROXY stores nothing and pays one class attribute check per
    read.

    Once the header is parsed, :attr:`peer` is its source address (:func:`proxy_peer`)
    and the subclass's :meth:`_proxy_done` runs (its own timeout, counters).  A peer
    outside :attr:`ProxySettings.networks` is refused at once, a malformed or
    oversized header as soon as it is, a header not whole in
    :attr:`ProxySettings.timeout` seconds when the timeout fires
    (:meth:`_proxy_timed_out`): each is logged (rate-limited) and the connection
    reset, nothing more read.
    """

    _proxy: ProxyHeaderParser | None = None  # the header's parser: set in the PROXY_HEADER state only
    # given by StreamServerProtocol
    peer: IAddress | None
    transport: Any

    if TYPE_CHECKING:

        def _note(self, category: str, level: LogLevel, fmt: str, **fields: Any) -> None: ...
        def setTimeout(self, period: float | None) -> object: ...  # TimeoutMixin's

    def _proxy_begin(self, proxy: ProxySettings) -> bool:
        """Enter the PROXY_HEADER state (from ``connectionMade``); whether the connection goes on.

        A peer that may not send a header is reset at once (``False``).  Otherwise the
        ``proxy.timeout`` starts (``setTimeout``: the subclass's ``timeoutConnection``
        calls :meth:`_proxy_timed_out` while :attr:`_proxy` is set).
        """
        real = self.peer if self.peer is not None else self.transport.getPeer()
        if not peer_allowed(real, proxy.allowed):
            self._proxy_drop(
                "proxy_refused", "refused a connection from {peer}: not in --proxy-from, "
                "so it may not send a PROXY header",
            )  # fmt: skip
            return False
        self._proxy = ProxyHeaderParser(max_length=proxy.max_length)
        self.setTimeout(proxy.timeout)
        return True

    def _proxy_data(self, data: bytes) -> bytes | None:
        """Feed header bytes: the bytes after the header once it is whole, else ``None``."""
        parser = self._proxy
        assert parser is not None
        try:
            header = parser.feed(data)
        except ProxyProtocolError as e:
            if parser is not _DROPPED:
                self._proxy_drop("proxy_error", "bad PROXY header from {peer}: {reason}", reason=str(e))
            return None
        if header is None:
            return None
        self._proxy = None
        proxy = self.peer
        self.peer = proxy_peer(header, proxy) if proxy is not None else None
        self._proxy_done(header, proxy)
        return parser.rest

    def _proxy_done(self, header: ProxyHeader, proxy: IAddress | None) -> None:
        """The header is parsed and :attr:`peer` set: the subclass's own timeout, counters, log."""

    def _proxy_eof(self) -> None:
        """The peer ended its side inside the PROXY_HEADER state: reset (after a partial header, logged)."""
        parser = self._proxy
        assert parser is not None
        try:
            parser.eof()
        except ProxyProtocolError as e:
            if parser is not _DROPPED:
                self._proxy_drop("proxy_error", "bad PROXY header from {peer}: {reason}", reason=str(e))
                return
        self._proxy_drop(None, "")

    def _proxy_timed_out(self, timeout: float) -> None:
        """The header was not whole ``timeout`` seconds after the connection opened: reset."""
        if self._proxy is not _DROPPED:
            self._proxy_drop(
                "proxy_timeout", "no complete PROXY header from {peer} within {timeout:g} s", timeout=timeout
            )

    def _proxy_drop(self, category: str | None, fmt: str, *, reset: bool = True, **fields: Any) -> None:
        """Log (unless ``category`` is ``None``) and reset the connection (or close it:
        ``reset=False``, for a drain); read nothing more."""
        self._proxy = _DROPPED
        self.setTimeout(None)
        if category is not None:
            self._note(category, LogLevel.warn, fmt, **fields)
        if reset:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()


_DROPPED: Final = ProxyHeaderParser()
"""The parser of every connection dropped in the PROXY_HEADER state (its bytes are ignored)."""
with suppress(ProxyProtocolError):
    _DROPPED.feed(b"\x00")  # failed for good: feeding it again raises, and nothing is logged twice

"""UDP endpoints and their strings, in the style of Twisted's stream endpoints.

Twisted has no UDP endpoints (twisted#4471); these fill the gap for sockproto:

- ``udp:PORT[:interface=ADDR]`` or ``udp:port=PORT[:interface=ADDR]`` listens.  Without
  an interface it listens on every IPv4 address, as ``tcp:`` does.  The colons of an
  IPv6 address are escaped as in Twisted's strings: ``udp:8751:interface=\\:\\:1``.
  ``interface=\\:\\:`` is dual-stack: it serves IPv4 peers too, whatever the system's
  ``bindv6only`` default.
- ``udp:host=HOST:port=PORT`` (or ``udp:HOST:PORT``) connects a UDP socket to HOST, a
  name or an address, resolved with ``getaddrinfo``: each address is tried in order
  until a socket can be connected to it.

Every socket reads 65536 bytes at a time (Twisted's default is 8192), so no datagram
is ever cut.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any, Protocol, TypeVar

from twisted.internet import udp
from twisted.internet.defer import Deferred, execute, succeed
from twisted.internet.error import CannotListenError, ConnectError, DNSLookupError
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableDescriptor,
    IListeningPort,
    IReactorFDSet,
    IReactorSocket,
)
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..core.datagram import READ_SIZE

__all__ = [
    "DatagramProtocolFactory",
    "UDPClientEndpoint",
    "UDPServerEndpoint",
    "udp_client_from_string",
    "udp_server_from_string",
]

P = TypeVar("P", bound=DatagramProtocol)
_SockAddr = tuple[Any, ...]


class DatagramProtocolFactory(Protocol):
    """Builds a datagram protocol per socket, like a stream protocol factory does per connection."""

    def buildProtocol(self, addr: IAddress | None, /) -> DatagramProtocol: ...


class UDPServerEndpoint:
    """Listen for datagrams on ``interface:port``.

    :param reactor: provides ``listenUDP`` (and ``adoptDatagramPort`` for dual stack).
    :param port: the UDP port, 0 for any free one.
    :param interface: an IPv4 or IPv6 address; ``""`` is every IPv4 address, ``"::"``
        every IPv4 and IPv6 address.
    """

    def __init__(self, reactor: Any, port: int, interface: str = "") -> None:
        self.reactor = reactor
        self.port = port
        self.interface = interface

    def __repr__(self) -> str:
        return f"<UDPServerEndpoint port={self.port} interface={self.interface!r}>"

    def listen(self, protocol: DatagramProtocol | DatagramProtocolFactory) -> Deferred[IListeningPort]:
        """Bind the socket and start ``protocol`` on it.

        :param protocol: a ``DatagramProtocol``, or a factory whose ``buildProtocol``
            makes one (so one service can listen on several endpoints).
        :return: a Deferred firing with the listening port, or failing with
            :class:`~twisted.internet.error.CannotListenError`.
        """
        return execute(self._listen, protocol)

    def _listen(self, protocol: DatagramProtocol | DatagramProtocolFactory) -> IListeningPort:
        if not isinstance(protocol, DatagramProtocol):
            protocol = protocol.buildProtocol(None)
        if not _is_unspecified_ipv6(self.interface) or not IReactorSocket.providedBy(self.reactor):
            port: IListeningPort = self.reactor.listenUDP(
                self.port, protocol, interface=self.interface, maxPacketSize=READ_SIZE
            )
            return port
        # Twisted's listenUDP binds at once, leaving IPV6_V6ONLY at the system's
        # default (on in BSDs, Windows, and Linux with bindv6only=1).  Bind the socket
        # here, dual-stack, and hand it over.
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setblocking(False)
            sock.bind((self.interface, self.port))
        except OSError as e:
            sock.close()
            raise CannotListenError(self.interface, self.port, e) from e
        try:
            port = self.reactor.adoptDatagramPort(
                sock.fileno(), socket.AF_INET6, protocol, maxPacketSize=READ_SIZE
            )
        finally:
            sock.close()  # the port holds its own duplicate of the descriptor
        return port


class UDPClientEndpoint:
    """Connect a UDP socket to ``host:port`` (the kernel then drops other senders' datagrams).

    :param reactor: provides ``listenUDP`` and, for names, ``getThreadPool``.
    :param host: a name or an IP address.
    :param port: the server's port.
    """

    def __init__(self, reactor: Any, host: str, port: int) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port

    def __repr__(self) -> str:
        return f"<UDPClientEndpoint host={self.host!r} port={self.port}>"

    def connect(self, protocol: P) -> Deferred[P]:
        """Resolve the host, then connect a socket running ``protocol`` to the first address that works.

        :return: a Deferred firing with ``protocol`` once its transport is connected,
            or failing with :class:`~twisted.internet.error.DNSLookupError` or
            :class:`~twisted.internet.error.ConnectError`.
        """

        def connect_first(addresses: list[tuple[int, _SockAddr]]) -> P:
            return self._connect(addresses, protocol)

        return self.resolve().addCallback(connect_first)

    def resolve(self) -> Deferred[list[tuple[int, _SockAddr]]]:
        """The ``(family, sockaddr)`` of each address of the host, in ``getaddrinfo``'s order.

        An IP address is used as it is; a name is resolved in the reactor's thread
        pool, since ``getaddrinfo`` blocks.
        """
        try:
            literal = _gai(self.host, self.port, socket.AI_NUMERICHOST)
        except socket.gaierror:
            pass
        else:
            return succeed(literal)
        d: Deferred[list[tuple[int, _SockAddr]]] = deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), _gai, self.host, self.port, 0
        )

        def failed(failure: Any) -> None:
            failure.trap(socket.gaierror)
            raise DNSLookupError(f"udp:host={self.host}: {failure.value}")

        d.addErrback(failed)
        return d

    def _connect(self, addresses: list[tuple[int, _SockAddr]], protocol: P) -> P:
        errors = []
        for family, sockaddr in addresses:
            problem = _unusable(family, sockaddr)
            if problem is not None:
                errors.append(f"{sockaddr[0]}: {problem}")
                continue
            bind = "::" if family == socket.AF_INET6 else ""
            if IReactorFDSet.providedBy(self.reactor):
                port: Any = _ConnectedPort(0, protocol, bind, READ_SIZE, self.reactor)  # type: ignore[no-untyped-call]
                port.startListening()
            else:
                port = self.reactor.listenUDP(0, protocol, interface=bind, maxPacketSize=READ_SIZE)
            try:
                port.connect(sockaddr[0], sockaddr[1])
            except BaseException:
                port.stopListening()
                raise
            return protocol
        tried = "; ".join(errors) or "no address"
        raise ConnectError(string=f"udp:host={self.host}:port={self.port}: {tried}")


@implementer(IHalfCloseableDescriptor)
class _ConnectedPort(udp.Port):
    """A connected UDP port that reports ICMP refusals instead of closing (twisted#5377).

    Under epoll and poll, a pending socket error without data to read looks like a
    disconnection: Twisted closes the port, and ``connectionRefused`` is never called
    (only the select reactor calls ``doRead``, which does).  Declaring the port
    half-closeable makes those reactors call :meth:`readConnectionLost` instead, which
    reads (and so clears) the socket error, reports a refusal and resumes reading.
    """

    _log = Logger()
    _stopping = False

    def stopListening(self) -> Deferred[None] | None:
        self._stopping = True
        return super().stopListening()  # type: ignore[no-any-return, no-untyped-call]

    def readConnectionLost(self, reason: Failure) -> None:
        live = self.connected and not self._stopping
        code = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if live else 0
        if not code:
            self.connectionLost(reason)  # type: ignore[no-untyped-call]
            return
        if code == errno.ECONNREFUSED:
            self.protocol.connectionRefused()
        else:
            self._log.warn("UDP socket error: {error}", error=errno.errorcode.get(code, code))
        if not self._stopping:  # connectionRefused may have closed the port
            self.startReading()  # type: ignore[no-untyped-call]

    def writeConnectionLost(self, reason: Failure) -> None:
        self.connectionLost(reason)  # type: ignore[no-untyped-call]


def _unusable(family: int, sockaddr: _SockAddr) -> str | None:
    """Why a UDP socket cannot be connected to ``sockaddr``, or ``None`` if it can.

    A trial connect() sends no packet: it fails at once on an address the host cannot
    route to (an IPv6 address without an IPv6 route, for instance).
    """
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as trial:
            trial.connect(sockaddr)
    except OSError as e:
        return e.strerror or str(e)
    return None


def _gai(host: str, port: int, flags: int) -> list[tuple[int, _SockAddr]]:
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM, 0, flags)
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


def _is_unspecified_ipv6(interface: str) -> bool:
    try:
        address = ipaddress.ip_address(interface)
    except ValueError:
        return False
    return address.version == 6 and address.is_unspecified


# -- strings ---------------------------------------------------------------------------


def udp_server_from_string(reactor: Any, description: str) -> UDPServerEndpoint:
    """Parse ``udp:PORT[:interface=ADDR]`` (or ``udp:port=PORT...``).

    :raises ValueError: naming the part of ``description`` that is wrong.
    """
    args, kwargs = _parse(description, "port", "interface")
    if len(args) > 1:
        raise ValueError(_bad(description, f"unexpected part {args[1]!r}"))
    port = _take(description, "port", args[0] if args else None, kwargs)
    if port is None:
        raise ValueError(_bad(description, "missing the port (udp:PORT or udp:port=PORT)"))
    interface = kwargs.get("interface", "")
    if interface:
        try:
            ipaddress.ip_address(interface.partition("%")[0])
        except ValueError:
            raise ValueError(_bad(description, f"interface {interface!r} is not an IP address")) from None
    return UDPServerEndpoint(reactor, _port(description, port), interface)


def udp_client_from_string(reactor: Any, description: str) -> UDPClientEndpoint:
    """Parse ``udp:host=HOST:port=PORT`` (or ``udp:HOST:PORT``).

    :raises ValueError: naming the part of ``description`` that is wrong.
    """
    args, kwargs = _parse(description, "host", "port")
    if len(args) > 2:
        raise ValueError(_bad(description, f"unexpected part {args[2]!r}"))
    host = _take(description, "host", args[0] if args else None, kwargs)
    port = _take(description, "port", args[1] if len(args) > 1 else None, kwargs)
    if not host:
        raise ValueError(_bad(description, "missing the host (udp:host=HOST:port=PORT)"))
    if port is None:
        raise ValueError(_bad(description, "missing the port (udp:host=HOST:port=PORT)"))
    return UDPClientEndpoint(reactor, host, _port(description, port))


def _parse(description: str, *known: str) -> tuple[list[str], dict[str, str]]:
    """Split ``udp:a:k=v`` into positional and keyword parts, as Twisted's strings do.

    A backslash escapes the next character; after ``=`` only ``:`` separates.
    """
    parts: list[list[str]] = [[]]
    current: list[str] = []
    chars = iter(description)
    for char in chars:
        if char == "\\":
            escaped = next(chars, None)
            if escaped is None:
                raise ValueError(_bad(description, "ends with a lone backslash"))
            current.append(escaped)
        elif char == ":":
            parts[-1].append("".join(current))
            parts.append([])
            current = []
        elif char == "=" and not parts[-1]:
            parts[-1].append("".join(current))
            current = []
        else:
            current.append(char)
    parts[-1].append("".join(current))
    scheme = parts[0]
    if len(scheme) != 1 or scheme[0].lower() != "udp":
        raise ValueError(_bad(description, "expected a udp: endpoint"))
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for part in parts[1:]:
        if len(part) == 1:
            args.append(part[0])
            continue
        name, value = part
        if name not in known:
            raise ValueError(_bad(description, f"unknown parameter {name!r} (known: {', '.join(known)})"))
        if name in kwargs:
            raise ValueError(_bad(description, f"{name!r} is given twice"))
        kwargs[name] = value
    return args, kwargs


def _take(description: str, name: str, positional: str | None, kwargs: dict[str, str]) -> str | None:
    if positional is not None and name in kwargs:
        raise ValueError(_bad(description, f"the {name} is given twice"))
    return kwargs.get(name, positional)


def _port(description: str, text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise ValueError(_bad(description, f"port {text!r} is not a number from 0 to 65535"))
    return int(text)


def _bad(description: str, problem: str) -> str:
    return f"{description!r}: {problem}{_ipv6_hint(description)}"


def _ipv6_hint(description: str) -> str:
    return " (escape the colons of an IPv6 address: \\:)" if "::" in description.replace("\\:", "") else ""

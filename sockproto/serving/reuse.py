"""Reactors an endpoint listens through when sockproto runs several worker processes.

An endpoint string (``tcp:``, ``ssl:``, ``unix:``, ``systemd:``, ``udp:``, and any
wrapper around them, such as ``haproxy:``) listens by calling the reactor it was
parsed with: ``listenTCP``, ``listenSSL``, ``listenUNIX``, ``adoptStreamPort`` or
``listenUDP``.  Parsing the same string with one of these stand-ins changes *how* the
socket is obtained and nothing else, so every endpoint type and wrapper keeps working:

:class:`AdoptingReactor`
    A worker's stand-in: the socket was bound by the parent and inherited as file
    descriptor ``fd``; the listen call adopts it (``adoptStreamPort`` /
    ``adoptDatagramPort``).  TLS is wrapped after the adoption, as Twisted's own
    ``listenSSL`` does (:class:`~twisted.protocols.tls.TLSMemoryBIOFactory`).
:class:`ReusePortReactor`
    ``--reuse-port``: the listen call binds a socket of its own with ``SO_REUSEPORT``
    (Linux spreads connections and datagrams over every socket bound so), then adopts
    it.  ``probe=True`` binds and closes at once: the parent's check that a worker will
    be able to bind, without taking a share of the traffic.

Every other attribute is the real reactor's.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Final

from twisted.internet.error import CannotListenError
from twisted.protocols.tls import TLSMemoryBIOFactory

__all__ = ["REUSE_PORT_SUPPORTED", "AdoptingReactor", "ReusePortReactor", "socket_family"]

REUSE_PORT_SUPPORTED: Final = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
"""Whether ``--reuse-port`` balances between sockets here (Linux; BSDs only share the port)."""


def socket_family(fd: int) -> int:
    """The address family of the socket open as ``fd`` (``AF_INET``, ``AF_INET6``, ``AF_UNIX``)."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        return int(sock.family)
    finally:
        sock.close()


class _StandIn:
    """Delegate everything but the listen calls to the real reactor."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


class AdoptingReactor(_StandIn):
    """Listen on the inherited socket ``fd`` whatever the endpoint asks for (see the module)."""

    def __init__(self, reactor: Any, fd: int) -> None:
        super().__init__(reactor)
        self.fd = fd

    def _stream(self, factory: Any) -> Any:
        return self._reactor.adoptStreamPort(self.fd, socket_family(self.fd), factory)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        return self._stream(factory)

    def listenSSL(
        self, port: int, factory: Any, contextFactory: Any, backlog: int = 50, interface: str = ""
    ) -> Any:
        return self._stream(TLSMemoryBIOFactory(contextFactory, False, factory))

    def listenUNIX(self, address: Any, factory: Any, *args: Any, **kwargs: Any) -> Any:
        return self._stream(factory)

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: int, factory: Any) -> Any:
        return self._stream(factory)  # systemd: the parent's inherited socket, passed on as self.fd

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> Any:
        return self._reactor.adoptDatagramPort(self.fd, socket_family(self.fd), protocol, maxPacketSize)


class ReusePortReactor(_StandIn):
    """Bind an ``SO_REUSEPORT`` socket per listen call (see the module).

    :param probe: bind and close at once, returning ``None`` (nothing listens).
    """

    def __init__(self, reactor: Any, *, probe: bool = False) -> None:
        super().__init__(reactor)
        self.probe = probe

    def _bind(self, kind: int, port: int, interface: str, backlog: int = 50) -> socket.socket | None:
        if not REUSE_PORT_SUPPORTED:
            raise CannotListenError(interface, port, OSError("SO_REUSEPORT balancing needs Linux"))
        if not port:
            raise CannotListenError(
                interface, port, ValueError("--reuse-port needs a fixed port: every worker binds its own")
            )
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        sock = socket.socket(family, kind)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            elif family == socket.AF_INET6 and interface in ("::", "::0"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack, as udp: does
            sock.bind((interface or "0.0.0.0", port))  # noqa: S104 - tcp:PORT means every address
            if self.probe:
                sock.close()
                return None
            if kind == socket.SOCK_STREAM:
                sock.listen(backlog)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise CannotListenError(interface, port, e) from e
        return sock

    def _stream(self, port: int, factory: Any, backlog: int, interface: str) -> Any:
        sock = self._bind(socket.SOCK_STREAM, port, interface, backlog)
        if sock is None:
            return None
        try:
            return self._reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
        finally:
            sock.close()  # the port holds its own duplicate

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        return self._stream(port, factory, backlog, interface)

    def listenSSL(
        self, port: int, factory: Any, contextFactory: Any, backlog: int = 50, interface: str = ""
    ) -> Any:
        return self._stream(port, TLSMemoryBIOFactory(contextFactory, False, factory), backlog, interface)

    def listenUNIX(self, address: Any, factory: Any, *args: Any, **kwargs: Any) -> Any:
        raise CannotListenError(None, address, ValueError("--reuse-port applies to tcp:, ssl: and udp: only"))

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: int, factory: Any) -> Any:
        raise CannotListenError(
            None, fileDescriptor, ValueError("--reuse-port cannot apply to a socket bound by systemd")
        )

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> Any:
        sock = self._bind(socket.SOCK_DGRAM, port, interface)
        if sock is None:
            return None
        try:
            return self._reactor.adoptDatagramPort(sock.fileno(), sock.family, protocol, maxPacketSize)
        finally:
            sock.close()

"""How the datagram server sends its replies: straight to the socket when it can.

``twisted.internet.udp.Port.write`` checks on every call that the address is an IP
literal of the socket's family (``isIPAddress``, ``isIPv6Address``: about 1.3 us, a
third of what a small echo costs in Twisted).  A server's reply always goes to an
address that ``recvfrom`` on that same socket returned (Twisted hands it to
``datagramReceived``), which the socket's ``sendto`` takes as it is: the check could
never fail, so :class:`ReplyingProtocol` skips it and sends with the socket's
``sendto``, handling its errors as ``Port.write`` does (:meth:`~ReplyingProtocol._send_failed`).
Any other transport (an in-memory one, another reactor's port) gets ``write``.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import ClassVar

from twisted.internet import udp
from twisted.internet.error import MessageLengthError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger, LogLevel

from ..core.datagram import DropReason
from ..serving.logs import LogLimiter
from .stats import DatagramStats

__all__ = ["ReplyingProtocol"]

Address = tuple[str, int]
Send = Callable[[bytes, Address], object]


def _not_listening(datagram: bytes, addr: Address) -> None:
    """The sender of a protocol without a socket: every reply fails (and is counted)."""
    raise OSError(errno.EBADF, "the socket is not listening")


class ReplyingProtocol(DatagramProtocol):
    """A ``DatagramProtocol`` that replies to its peers, counting what it sends.

    The base of :class:`~sockproto.datagram.protocol.DatagramServerProtocol`: a hot
    path calls ``self._sendto(datagram, addr)`` itself (and :meth:`_send_failed` if it
    raises ``OSError`` or ``MessageLengthError``); others call :meth:`_send`.

    :ivar stats: where sends and failed sends are counted.
    :ivar limiter: rate-limits the log events of failed sends.
    """

    _log: ClassVar[Logger] = Logger()
    stats: DatagramStats
    limiter: LogLimiter

    def __init__(self) -> None:
        self._socket: socket.socket | None = None
        self._sendto: Send = _not_listening

    def startProtocol(self) -> None:
        transport = self.transport
        if isinstance(transport, udp.Port):
            self._socket = transport.getHandle()
            self._sendto = self._socket.sendto
        elif transport is not None:
            self._sendto = transport.write

    def stopProtocol(self) -> None:
        self._socket, self._sendto = None, _not_listening

    def connectionRefused(self) -> None:
        """The connected peer refused a reply (counted as a failed send); nothing else to do."""

    def _send(self, datagram: bytes, addr: Address) -> None:
        """Send one reply; a failed send is counted, never raised into the reactor."""
        try:
            self._sendto(datagram, addr)
        except (OSError, MessageLengthError) as e:
            self._send_failed(datagram, addr, e)
        else:
            self.stats.replied += 1
            self.stats.bytes_out += len(datagram)

    def _send_failed(self, datagram: bytes, addr: Address, error: Exception) -> None:
        """Handle a failed send as ``twisted.internet.udp.Port.write`` would, then count it.

        An interrupted call (``EINTR``) is retried.  Any other error drops the reply,
        counted ``send_failed`` and logged within the log rate: a full buffer
        (``EWOULDBLOCK``, ``ENOBUFS``; ``Port.write`` raises those) as much as a
        datagram too big (``EMSGSIZE``, Twisted's
        :class:`~twisted.internet.error.MessageLengthError`).  A refusal
        (``ECONNREFUSED``) on a connected socket also calls :meth:`connectionRefused`.
        """
        if isinstance(error, OSError):
            if error.errno == errno.EINTR:
                self._send(datagram, addr)
                return
            if error.errno == errno.EMSGSIZE:
                error = MessageLengthError("message too long")
            elif error.errno == errno.ECONNREFUSED and self._connected():
                self.connectionRefused()
        self.stats.drop(DropReason.SEND_FAILED)
        self.limiter.emit(
            self._log, "send_failed", LogLevel.info, "could not send {size} bytes to {addr}: {error}",
            size=len(datagram), addr=addr, error=error, service="datagram",
        )  # fmt: skip

    def _connected(self) -> bool:
        """Whether the socket written to directly is connected to one peer."""
        if self._socket is None:
            return False
        try:
            self._socket.getpeername()
        except OSError:
            return False
        return True

"""Writing an answer at once: the socket first, Twisted's buffer for what it leaves.

Twisted's ``transport.write`` never sends: it buffers the bytes and asks the reactor to
watch the socket for writability, so an answer leaves on the reactor's next pass, one
more ``epoll_wait`` and two ``epoll_ctl`` calls later.  For request/response traffic
that pass is most of the latency: the peer waits on it for every answer.

:func:`write_now` sends what the kernel accepts right away, as a blocking-socket
server's ``send`` would (the talk's partial-send lesson: it may take only part), and
hands the rest to ``transport.write``, so ordering, flow control (the producer is
paused past the transport's buffer size) and error handling stay Twisted's.  It does
so only for the reactor's own TCP and UNIX server transports, only while their buffers
are empty, and only for answers of at most the transport's ``SEND_LIMIT`` (128 KiB):
the rest of a larger one would be copied to reach Twisted's buffer (its ``write``
takes bytes only), which costs more than the pass saved.  Any other transport (TLS,
test transports, another reactor's) just gets ``transport.write``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

__all__ = ["write_now"]

_DIRECT: tuple[type[Any], ...] = (tcp.Server,)
try:
    from twisted.internet import unix
except ImportError:  # pragma: no cover - a platform without AF_UNIX
    pass
else:
    _DIRECT += (unix.Server,)


def write_now(transport: Any, data: bytes) -> None:
    """Write ``data`` to ``transport``, sending what the socket takes at once.

    :param transport: the protocol's transport.
    :param data: the bytes to write, in order after everything written before.
    """
    if (
        type(transport) not in _DIRECT
        or len(data) > transport.SEND_LIMIT  # a large answer: its rest would be copied
        or transport._tempDataLen  # Twisted holds unsent bytes: they go first
        or transport.offset < len(transport.dataBuffer)
        or not transport.connected
        or transport.disconnecting
        or transport._writeDisconnecting
    ):
        transport.write(data)
        return
    sent = transport.writeSomeData(data)  # the bytes the kernel took, or ConnectionLost
    if type(sent) is not int:
        transport.write(data)  # the socket is gone: Twisted's next write finds it out
    elif sent < len(data):
        transport.write(data[sent:])

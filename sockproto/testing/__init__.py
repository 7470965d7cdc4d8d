"""Test your handlers through sockproto's real protocol classes, without sockets.

Everything here runs synchronously, in memory, with a
:class:`~twisted.internet.task.Clock` instead of the reactor's timers: it fits
``twisted.trial.unittest.SynchronousTestCase`` (``successResultOf``,
``failureResultOf``) and plain pytest alike.

Frame service
    :func:`frame_pair` connects a real server and client; :func:`frame_exchange` sends
    raw bytes to a server and parses its answers.
Half-close service
    :func:`halfclose_pair` runs whole exchanges; :class:`HalfCloseTransport` drives one
    protocol by hand (Twisted's ``StringTransport`` cannot half-close).
Datagram service
    :func:`serve_datagrams` starts a server on a :class:`FakeDatagramTransport`, which
    records every datagram sent with its address.
Wire format
    :func:`build_frame`, :func:`build_request`, :func:`build_ping`, :func:`build_error`,
    :func:`parse_frames` (a byte string of frames into ``(kind, id, payload)`` tuples) and
    :func:`parse_error` (an ERROR payload into code and message).
Plumbing
    :class:`MemoryConnection` connects any two stream protocols, honouring
    ``pauseProducing``, streaming producers and half-close.
"""

from __future__ import annotations

from .datagram import Address, FakeDatagramTransport, serve_datagrams
from .frame import FramePair, frame_exchange, frame_pair
from .frames import (
    AnswerFrame,
    build_error,
    build_frame,
    build_ping,
    build_request,
    parse_error,
    parse_frames,
)
from .halfclose import HalfClosePair, HalfCloseTransport, halfclose_pair
from .memory import DEFAULT_WRITE_BUFFER, MemoryConnection, MemoryTransport, connect_protocols

__all__ = [
    "DEFAULT_WRITE_BUFFER",
    "Address",
    "AnswerFrame",
    "FakeDatagramTransport",
    "FramePair",
    "HalfClosePair",
    "HalfCloseTransport",
    "MemoryConnection",
    "MemoryTransport",
    "build_error",
    "build_frame",
    "build_ping",
    "build_request",
    "connect_protocols",
    "frame_exchange",
    "frame_pair",
    "halfclose_pair",
    "parse_error",
    "parse_frames",
    "serve_datagrams",
]

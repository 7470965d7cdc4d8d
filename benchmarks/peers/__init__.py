"""The servers the suite measures sockproto against, one small module per peer.

Each peer module has ``SERVICES`` (which of ``frame``, ``udp``, ``halfclose``, ``bare``
it serves) and ``serve(services, handler, max_payload, ready)``: it listens on
127.0.0.1, ephemeral ports, calls ``ready({service: port})`` once every socket listens,
then serves forever (:mod:`benchmarks.peers.serve` runs it in its own process and
ends it).  The wire formats are the ones the load clients speak:

- ``frame``: a 4-byte big-endian length, then the payload (``Int32StringReceiver``'s);
  the answer is framed the same way;
- ``udp``: one datagram in, the handler's answer datagram out;
- ``halfclose``: the request is everything up to the client's ``shutdown(SHUT_WR)``;
  the answer is everything up to the server's close;
- ``bare``: accept connections and do nothing (the memory baseline).

Each is written as a user of that framework writes it, no more: the measure is what a
user gets by choosing it.
"""

from __future__ import annotations

import importlib.util

# The order of the table: sockproto first, then plain Twisted, then the others.
PEERS: dict[str, str] = {
    "sockproto": "sockproto_peer",
    "twisted": "twisted_peer",
    "asyncio-streams": "asyncio_streams",
    "asyncio-protocol": "asyncio_protocol",
    "uvloop-streams": "uvloop_streams",
    "uvloop-protocol": "uvloop_protocol",
    "raw": "raw_sockets",
}
"""Peer name -> module in this package."""

LABELS: dict[str, str] = {
    "sockproto": "sockproto",
    "twisted": "plain Twisted",
    "asyncio-streams": "asyncio streams",
    "asyncio-protocol": "asyncio protocol",
    "uvloop-streams": "uvloop streams",
    "uvloop-protocol": "uvloop protocol",
    "raw": "raw blocking sockets",
}

SERVICES: dict[str, tuple[str, ...]] = {
    "sockproto": ("frame", "udp", "halfclose"),
    "twisted": ("frame", "udp", "halfclose", "bare"),
    "asyncio-streams": ("frame", "halfclose"),  # asyncio has no datagram streams
    "asyncio-protocol": ("frame", "udp", "halfclose"),
    "uvloop-streams": ("frame", "halfclose"),
    "uvloop-protocol": ("frame", "udp", "halfclose"),
    "raw": ("frame", "udp", "halfclose"),
}
"""What each peer serves (kept here so the orchestrator need not import the peers)."""


def unavailable(peer: str) -> str | None:
    """Why ``peer`` cannot run on this machine, or None."""
    if peer.startswith("uvloop") and importlib.util.find_spec("uvloop") is None:
        return "uvloop is not installed (pip install -e '.[bench]')"
    return None

"""The asyncio streams peer, run on uvloop's event loop."""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.peers import asyncio_streams

SERVICES = asyncio_streams.SERVICES


def serve(
    services: tuple[str, ...], handler: str, max_payload: int, ready: Callable[[dict[str, int]], None]
) -> None:
    import uvloop

    asyncio_streams.serve(services, handler, max_payload, ready, loop_factory=uvloop.new_event_loop)

"""asyncio streams: ``start_server`` and a coroutine per connection, as the asyncio docs show.

``readexactly`` the header, then the payload; ``write`` the answer and ``await drain()``.
asyncio has no datagram streams, so this peer serves no UDP.  The same code runs on
uvloop (:mod:`benchmarks.peers.uvloop_streams`).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

from benchmarks.peers.handlers import HANDLERS
from benchmarks.peers.serve import BACKLOG

SERVICES = ("frame", "halfclose")
_HEADER = struct.Struct("!I")


def serve(
    services: tuple[str, ...],
    handler: str,
    max_payload: int,
    ready: Callable[[dict[str, int]], None],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
) -> None:
    answer = HANDLERS[handler]

    async def frame(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = _HEADER.unpack(await reader.readexactly(4))
                if length > max_payload:
                    break
                result = answer(await reader.readexactly(length))
                writer.write(_HEADER.pack(len(result)) + result)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def halfclose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.read()  # to end of file: the client's half-close
            writer.write(answer(request))
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    async def main() -> None:
        ports = {}
        servers: list[Any] = []
        for name, callback in (("frame", frame), ("halfclose", halfclose)):
            if name in services:
                server = await asyncio.start_server(callback, "127.0.0.1", 0, backlog=BACKLOG)
                servers.append(server)
                ports[name] = server.sockets[0].getsockname()[1]
        ready(ports)
        await asyncio.Event().wait()  # serve until the process is ended

    loop = loop_factory()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(main())

"""asyncio protocols: ``data_received`` with a hand-written parser, one ``write`` per answer.

The frame parser is :class:`~benchmarks.peers.lengthprefix.LengthPrefixParser` (a
``bytearray`` and ``struct``).  The same classes run on uvloop
(:mod:`benchmarks.peers.uvloop_protocol`).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

from benchmarks.peers.handlers import HANDLERS
from benchmarks.peers.lengthprefix import LengthPrefixParser
from benchmarks.peers.serve import BACKLOG

SERVICES = ("frame", "udp", "halfclose")
_PACK = struct.Struct("!I").pack


def serve(
    services: tuple[str, ...],
    handler: str,
    max_payload: int,
    ready: Callable[[dict[str, int]], None],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
) -> None:
    answer = HANDLERS[handler]

    class FrameEcho(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.parser = LengthPrefixParser()

        def data_received(self, data: bytes) -> None:
            for payload in self.parser.feed(data):
                result = answer(payload)
                self.transport.write(_PACK(len(result)) + result)

    class UDPEcho(asyncio.DatagramProtocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.transport.sendto(answer(data), addr)

    class HalfCloseEcho(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.chunks: list[bytes] = []

        def data_received(self, data: bytes) -> None:
            self.chunks.append(data)

        def eof_received(self) -> bool:
            self.transport.write(answer(b"".join(self.chunks)))
            self.transport.close()  # after the buffered answer is sent
            return True

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ports = {}
        keep: list[Any] = []
        for name, protocol in (("frame", FrameEcho), ("halfclose", HalfCloseEcho)):
            if name in services:
                server = await loop.create_server(protocol, "127.0.0.1", 0, backlog=BACKLOG)
                keep.append(server)
                ports[name] = server.sockets[0].getsockname()[1]
        if "udp" in services:
            transport, _ = await loop.create_datagram_endpoint(UDPEcho, local_addr=("127.0.0.1", 0))
            keep.append(transport)
            ports["udp"] = transport.get_extra_info("sockname")[1]
        ready(ports)
        await asyncio.Event().wait()

    loop = loop_factory()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(main())

"""Raw blocking sockets, as the talk shows them: no framework, no event loop.

- frames: a thread per connection; ``recv`` returns whatever has arrived, not a
  message, so the bytes go to a buffer and every whole frame in it is answered; the
  answers of one ``recv`` go out in one ``sendall`` (which loops over partial sends);
- half-close: one connection at a time: ``accept``, ``recv`` to end of file,
  ``sendall``, ``close``;
- UDP: a non-blocking socket drained after each readiness (``recvfrom`` until
  ``EAGAIN``), each answer sent with ``sendto``.

Each listener runs in its own thread; the main thread just waits.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from collections.abc import Callable

from benchmarks.peers.handlers import HANDLERS
from benchmarks.peers.serve import BACKLOG

SERVICES = ("frame", "udp", "halfclose")
_HEADER = struct.Struct("!I")


_UNPACK_FROM = _HEADER.unpack_from
RECV = 65536  # under glibc's mmap threshold: no mmap per recv


def serve(
    services: tuple[str, ...], handler: str, max_payload: int, ready: Callable[[dict[str, int]], None]
) -> None:
    answer = HANDLERS[handler]

    def listener(kind: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            sock.listen(BACKLOG)
        return sock

    def frame_connection(conn: socket.socket) -> None:
        buffer = bytearray()
        with conn:
            try:
                while data := conn.recv(RECV):
                    buffer += data
                    answers = []
                    offset, end = 0, len(buffer)
                    while end - offset >= 4:
                        (length,) = _UNPACK_FROM(buffer, offset)
                        if length > max_payload:
                            return
                        stop = offset + 4 + length
                        if stop > end:
                            break
                        with memoryview(buffer) as view:
                            payload = bytes(view[offset + 4 : stop])
                        result = answer(payload)
                        answers.append(_HEADER.pack(len(result)) + result)
                        offset = stop
                    del buffer[:offset]
                    if answers:
                        conn.sendall(b"".join(answers))
            except OSError:
                return

    def frame_server(sock: socket.socket) -> None:
        while True:
            conn, _ = sock.accept()
            threading.Thread(target=frame_connection, args=(conn,), daemon=True).start()

    def halfclose_server(sock: socket.socket) -> None:
        while True:
            conn, _ = sock.accept()
            with conn:
                try:
                    chunks = []
                    while data := conn.recv(65536):
                        chunks.append(data)
                    conn.sendall(answer(b"".join(chunks)))
                except OSError:
                    pass

    def udp_server(sock: socket.socket) -> None:
        sock.setblocking(False)
        while True:
            select.select([sock], [], [])
            while True:
                try:
                    data, addr = sock.recvfrom(65536)
                except BlockingIOError:
                    break
                # a full send buffer loses the datagram, as UDP allows
                with contextlib.suppress(BlockingIOError):
                    sock.sendto(answer(data), addr)

    ports = {}
    threads = []
    for name, kind, loop in (
        ("frame", socket.SOCK_STREAM, frame_server),
        ("halfclose", socket.SOCK_STREAM, halfclose_server),
        ("udp", socket.SOCK_DGRAM, udp_server),
    ):
        if name in services:
            sock = listener(kind)
            ports[name] = sock.getsockname()[1]
            threads.append(threading.Thread(target=loop, args=(sock,), daemon=True))
    for thread in threads:
        thread.start()
    ready(ports)
    threading.Event().wait()

"""A blocking SPF/1 and half-close client for the deployment tests, usable as a script.

The tests call :func:`frame_request` from their own process on loopback; inside a
network namespace they run this file with ``ip netns exec NS python client.py`` (it
imports nothing but the standard library), which prints one JSON line per request.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

HEADER = struct.Struct(">2sBBII")
REQUEST, RESPONSE = 1, 2


def _connect(host: str, port: int, source: str | None, timeout: float) -> socket.socket:
    return socket.create_connection(
        (host, port), timeout=timeout, source_address=(source, 0) if source else None
    )


def _read_exactly(s: socket.socket, size: int, got: bytes = b"") -> bytes:
    while len(got) < size:
        chunk = s.recv(size - len(got))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(got)} of {size} bytes: {got!r}")
        got += chunk
    return got


def frame_exchange(s: socket.socket, payload: bytes = b"who", ident: int = 1) -> bytes:
    """One SPF/1 REQUEST on the connected socket ``s``; the RESPONSE's payload.

    :raises ConnectionError: if the connection closes early, or the answer is not a
        RESPONSE to this request.
    """
    s.sendall(HEADER.pack(b"SP", 1, REQUEST, ident, len(payload)) + payload)
    magic, version, kind, answer_id, length = HEADER.unpack(_read_exactly(s, HEADER.size))
    body = _read_exactly(s, length)
    if (magic, version, kind, answer_id) != (b"SP", 1, RESPONSE, ident):
        raise ConnectionError(f"not a RESPONSE to request {ident}: kind {kind}, id {answer_id}, {body!r}")
    return body


def frame_request(
    host: str,
    port: int,
    payload: bytes = b"who",
    *,
    ident: int = 1,
    source: str | None = None,
    timeout: float = 5.0,
) -> bytes:
    """One SPF/1 REQUEST on a new connection (from ``source`` if given); the RESPONSE's payload."""
    with _connect(host, port, source, timeout) as s:
        return frame_exchange(s, payload, ident)


def halfclose_request(
    host: str, port: int, payload: bytes, *, source: str | None = None, timeout: float = 5.0
) -> bytes:
    """Send ``payload``, half-close (``shutdown(SHUT_WR)``), read the answer to the end."""
    with _connect(host, port, source, timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    return answer


def main(argv: list[str]) -> int:
    """``client.py HOST PORT COUNT [PAUSE]``: COUNT frame requests, one JSON line each."""
    host, port, count = argv[0], int(argv[1]), int(argv[2])
    pause = float(argv[3]) if len(argv) > 3 else 0.0
    for i in range(count):
        try:
            line = {"ok": frame_request(host, port, ident=i + 1).decode()}
        except OSError as e:
            line = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(line), flush=True)
        time.sleep(pause)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

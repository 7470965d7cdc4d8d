"""The load clients, each run in its own process: ``python -m benchmarks.suite.loadgen JSON``.

``JSON`` names the client (``kind``) and its arguments; the result is printed as one
JSON line.  Every client is plain blocking or non-blocking sockets with the standard
library (no framework), the same for every server, and checks every answer byte:

- ``stream``: ``conns`` connections, each keeping ``in_flight`` 4-byte-length-prefixed
  frames of ``size`` bytes in flight (an answer received sends the next request);
  frames/s over ``seconds`` after a ``warmup``, and latency percentiles;
- ``big``: one frame of ``size`` bytes; time to the first byte of the answer and to
  the whole answer;
- ``idle``: open ``count`` connections, say so, and hold them until stdin closes;
- ``udp`` and ``halfclose``: the load clients of ``bench_datagram.py`` (32 datagrams in
  flight) and ``bench_halfclose.py`` (a new connection per request), reused.
"""

from __future__ import annotations

import hashlib
import json
import resource
import selectors
import socket
import struct
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

RECV = 262144
_LINGER_RESET = struct.pack("ii", 1, 0)  # close() sends RST: no TIME_WAIT left behind


def payload_of(size: int) -> bytes:
    """A payload whose bytes are not all alike, so a misplaced byte is seen."""
    block = bytes(range(256))
    return block * (size // 256) + block[: size % 256]


def connect(port: int, *, reset: bool = True) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    return sock


class _Conn:
    __slots__ = ("pending", "received", "sent_at", "sock", "writing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = bytearray()  # requests not yet accepted by the kernel
        self.received = 0  # answer bytes received so far
        self.sent_at: deque[float] = deque()  # when each request in flight was queued
        self.writing = False


def stream(port: int, conns: int, in_flight: int, size: int, warmup: float, seconds: float) -> dict[str, Any]:
    """Keep ``in_flight`` echo requests in flight on each of ``conns`` connections."""
    frame = struct.pack("!I", size) + payload_of(size)
    flen = len(frame)
    # Every answer stream is ``frame`` repeated: compare each read with the same bytes.
    pattern = frame * (RECV // flen + 2)
    sel = selectors.DefaultSelector()
    READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
    all_conns = []
    for _ in range(conns):
        sock = connect(port)
        sock.setblocking(False)
        conn = _Conn(sock)
        all_conns.append(conn)
        sel.register(sock, READ, conn)
    latencies: list[float] = []
    done = 0
    counted_from = -1
    perf = time.perf_counter

    def send(conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.pending)
        except BlockingIOError:
            sent = 0
        del conn.pending[:sent]
        want = bool(conn.pending)
        if want != conn.writing:
            conn.writing = want
            sel.modify(conn.sock, READ | WRITE if want else READ, conn)

    start = perf()
    for conn in all_conns:
        conn.pending += frame * in_flight
        conn.sent_at.extend([start] * in_flight)
        send(conn)
    measure_from = start + warmup
    stop = measure_from + seconds
    measuring = False
    give_up = stop + 10.0  # a window without a single answer is extended (a loaded machine)
    while True:
        now = perf()
        if now >= stop and (done > counted_from >= 0 or now >= give_up):
            break
        if not measuring and now >= measure_from:
            measuring = True
            counted_from = done
            measure_from = now
        for key, events in sel.select(max(min(stop - now, 0.05), 0.001)):
            conn = key.data
            if events & READ:
                data = conn.sock.recv(RECV)
                if not data:
                    raise ConnectionError("the server closed the connection")
                phase = conn.received % flen
                if data != pattern[phase : phase + len(data)]:
                    raise ValueError(f"wrong answer bytes at offset {conn.received}")
                before = conn.received // flen
                conn.received += len(data)
                answered = conn.received // flen - before
                if answered:
                    now = perf()
                    sent_at = conn.sent_at
                    if measuring:
                        for _ in range(answered):
                            latencies.append(now - sent_at.popleft())
                    else:
                        for _ in range(answered):
                            sent_at.popleft()
                    done += answered
                    conn.pending += frame * answered
                    sent_at.extend([now] * answered)
                    send(conn)
            elif events & WRITE:
                send(conn)
    elapsed = perf() - measure_from
    for conn in all_conns:
        conn.sock.close()
    measured = done - counted_from if counted_from >= 0 else 0
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] if latencies else 0.0

    return {
        "rate": measured / elapsed,
        "bytes_rate": measured * size / elapsed,
        "ops": done,
        "p50_ms": pct(50) * 1e3,
        "p99_ms": pct(99) * 1e3,
    }


def big(port: int, size: int, handler: str) -> dict[str, Any]:
    """Send one frame of ``size`` bytes; time the first byte and the whole of the answer."""
    payload = payload_of(size)
    expected = payload if handler == "echo" else hashlib.sha256(payload).hexdigest().encode() + b"\n"
    answer_len = 4 + len(expected)
    with connect(port, reset=False) as sock:
        sock.settimeout(600)
        start = time.perf_counter()
        sock.sendall(struct.pack("!I", size))
        sock.sendall(payload)
        sent = time.perf_counter()
        chunks = [sock.recv(RECV)]
        first = time.perf_counter()
        got = len(chunks[0])
        while got < answer_len:
            data = sock.recv(RECV)
            if not data:
                break
            chunks.append(data)
            got += len(data)
        end = time.perf_counter()
    answer = b"".join(chunks)
    if answer != struct.pack("!I", len(expected)) + expected:
        raise ValueError(f"wrong answer: {len(answer)} bytes, expected {answer_len}")
    return {"ttfb": first - start, "after_send": first - sent, "total": end - start}


def idle(port: int, count: int) -> None:
    """Open ``count`` connections; print ``ready``; hold them until stdin closes."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held = [connect(port) for _ in range(count)]
    print(json.dumps({"ready": len(held)}), flush=True)
    sys.stdin.read()
    for sock in held:
        sock.close()


def main() -> None:
    args = json.loads(sys.argv[1])
    kind = args.pop("kind")
    if kind == "idle":
        idle(**args)
        return
    result: dict[str, Any]
    start = resource.getrusage(resource.RUSAGE_SELF)
    if kind == "stream":
        result = stream(**args)
    elif kind == "big":
        result = big(**args)
    elif kind == "udp":
        from benchmarks import bench_datagram

        result = bench_datagram.load(args["port"], args["warmup"], args["seconds"])
        result["ops"] = result.pop("answers")
    elif kind == "halfclose":
        from benchmarks import bench_halfclose

        out = bench_halfclose.load(args["port"], args["seconds"], args["size"], args["concurrency"])
        if out["errors"]:
            raise ValueError(f"{out['errors']} half-close requests failed")
        result = {"rate": out["requests"] / out["seconds"], "ops": out["requests"]}
    else:
        raise SystemExit(f"unknown load kind {kind!r}")
    end = resource.getrusage(resource.RUSAGE_SELF)
    cpu = end.ru_utime - start.ru_utime + end.ru_stime - start.ru_stime
    if result.get("ops"):
        # a client near one CPU second per second is the bottleneck, not the server
        result["client_cpu_us"] = cpu / result["ops"] * 1e6
    print(json.dumps(result))


if __name__ == "__main__":
    main()

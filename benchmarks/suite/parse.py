"""Parsing without sockets, in one process: ``python -m benchmarks.suite.parse MODE ...``.

The same int32-length-prefixed stream, cut into 64 KiB reads, goes to:

- ``twisted``: a ``Int32StringReceiver`` whose ``stringReceived`` counts;
- ``simple``: the hand-written ``bytearray`` + ``struct`` parser
  (:class:`~benchmarks.peers.lengthprefix.LengthPrefixParser`);
- ``sockproto``: :class:`sockproto.core.decoder.FrameDecoder` with the ``INT32`` preset,
  delivering each frame as its payload bytes (``frame_type=bytes``), as
  ``stringReceived`` gets them;
- ``sockproto-frames``: the same decoder building a :class:`~sockproto.core.decoder.Frame`
  object per frame (what the frame server uses, to hand a request to the handler).

Modes: ``small ORDER FRAMES SIZE [REPEAT]`` times each parser of the comma-separated
``ORDER`` on ``FRAMES`` frames of ``SIZE`` bytes, best of ``REPEAT`` (3), and prints
the seconds as a JSON list;
``large WHICH SIZE`` times one frame of ``SIZE`` bytes (run it in a fresh process:
the allocator's history changes how badly a quadratic parser does); ``echo ORDER
FRAMES SIZE [REPEAT]`` times whole echo protocols (``twisted``: an ``Int32StringReceiver``
answering with ``sendString``; ``sockproto``: ``FrameServerProtocol``) over Twisted's
in-memory ``StringTransport``: the protocol's own cost, without the reactor.
"""

from __future__ import annotations

import json
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

READ = 65536
REPEAT = 3
PARSERS = ("sockproto", "sockproto-frames", "twisted", "simple")
ECHOES = ("sockproto", "twisted")


def parser(which: str) -> tuple[Callable[[bytes], Any], Callable[[], tuple[int, int]]]:
    """``(feed, counts)``: feed a read; the (frames, payload bytes) seen so far."""
    count = [0, 0]
    if which == "twisted":
        from twisted.internet.testing import StringTransport
        from twisted.protocols.basic import Int32StringReceiver

        class Counting(Int32StringReceiver):
            MAX_LENGTH = 2**31

            def stringReceived(self, string: bytes) -> None:
                count[0] += 1
                count[1] += len(string)

        proto = Counting()
        proto.makeConnection(StringTransport())
        return proto.dataReceived, lambda: (count[0], count[1])
    if which == "simple":
        from benchmarks.peers.lengthprefix import LengthPrefixParser

        simple = LengthPrefixParser()

        def feed_simple(data: bytes) -> None:
            for payload in simple.feed(data):
                count[0] += 1
                count[1] += len(payload)

        return feed_simple, lambda: (count[0], count[1])
    if which == "sockproto":
        from sockproto.core.decoder import FrameDecoder
        from sockproto.core.header import INT32

        payloads: FrameDecoder[Any] = FrameDecoder(INT32, max_payload=2**31, frame_type=bytes)

        def feed_payloads(data: bytes) -> None:
            for payload in payloads.feed(data):
                count[0] += 1
                count[1] += len(payload)

        return feed_payloads, lambda: (count[0], count[1])
    if which == "sockproto-frames":
        from sockproto.core.decoder import FrameDecoder
        from sockproto.core.header import INT32

        decoder: FrameDecoder[Any] = FrameDecoder(INT32, max_payload=2**31)

        def feed_sockproto(data: bytes) -> None:
            for frame in decoder.feed(data):
                count[0] += 1
                count[1] += len(frame.payload)

        return feed_sockproto, lambda: (count[0], count[1])
    raise SystemExit(f"unknown parser {which!r}")


def echo_protocol(which: str) -> tuple[Callable[[bytes], Any], Callable[[], int]]:
    """``(dataReceived, bytes written)`` of an echo protocol over a ``StringTransport``."""
    from twisted.internet.testing import StringTransport

    proto: Any
    if which == "twisted":
        from twisted.protocols.basic import Int32StringReceiver

        class Echo(Int32StringReceiver):
            MAX_LENGTH = 2**31

            def stringReceived(self, string: bytes) -> None:
                self.sendString(string)

        proto = Echo()
    elif which == "sockproto":
        from sockproto import INT32, FrameServerFactory
        from sockproto.handlers import echo

        proto = FrameServerFactory(echo, header=INT32, max_payload=2**31).buildProtocol(None)
    else:
        raise SystemExit(f"unknown echo protocol {which!r}")
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto.dataReceived, lambda: len(transport.value())


def reads_of(frames: int, size: int) -> list[bytes]:
    stream = (struct.pack("!I", size) + b"x" * size) * frames
    return [stream[i : i + READ] for i in range(0, len(stream), READ)]


def timed(feed: Callable[[bytes], Any], reads: list[bytes]) -> float:
    start = time.perf_counter()
    for data in reads:
        feed(data)
    return time.perf_counter() - start


def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "large":
        which, size = args[0], int(args[1])
        stream = struct.pack("!I", size) + b"\x5a" * size
        reads = [stream[i : i + READ] for i in range(0, len(stream), READ)]
        del stream
        feed, counts = parser(which)
        seconds = timed(feed, reads)
        if counts() != (1, size):
            raise SystemExit(f"{which} parsed {counts()}, expected (1, {size})")
        print(json.dumps(seconds))
        return
    order, frames, size = args[0].split(","), int(args[1]), int(args[2])
    repeat = int(args[3]) if len(args) > 3 else REPEAT
    reads = reads_of(frames, size)
    results = []
    for which in order:
        times = []
        for _ in range(repeat):  # a fresh parser each time; the best time is the least disturbed
            if mode == "small":
                feed, counts = parser(which)
                times.append(timed(feed, reads))
                if counts() != (frames, frames * size):
                    raise SystemExit(f"{which} parsed {counts()}, expected ({frames}, {frames * size})")
            elif mode == "echo":
                received, written = echo_protocol(which)
                times.append(timed(received, reads))
                if written() != frames * (size + 4):
                    raise SystemExit(f"{which} wrote {written()} bytes, expected {frames * (size + 4)}")
            else:
                raise SystemExit(f"unknown mode {mode!r}")
        results.append(min(times))
    print(json.dumps(results))


if __name__ == "__main__":
    main()

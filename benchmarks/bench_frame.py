"""Frame server vs Twisted's Int32StringReceiver, side by side, through an in-memory transport.

Feeds the same int32-framed byte stream to an ``Int32StringReceiver`` echo protocol and
to ``FrameServerFactory(echo, header=INT32)``, in one process, and prints the ratios:

- small frames (100-byte payloads, 64 KiB reads): frames/s, target >= 1.5x;
- one 32 MiB frame in 64 KiB reads: seconds, target >= 50x faster (Twisted's parser is
  quadratic, twisted#6358).  Each large-frame run happens in a fresh process, since the
  allocator's state changes how badly the quadratic copy behaves.

Usage: ``python benchmarks/bench_frame.py [--quick] [--rounds N]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.testing import StringTransport
from twisted.protocols.basic import Int32StringReceiver

from sockproto import INT32, FrameServerFactory
from sockproto.handlers import echo

READ = 65536


class TwistedEcho(Int32StringReceiver):
    MAX_LENGTH = 2**31

    def stringReceived(self, string: bytes) -> None:
        self.sendString(string)


def make(which: str) -> Any:
    proto = (
        TwistedEcho()
        if which == "twisted"
        else FrameServerFactory(echo, header=INT32, max_payload=2**31).buildProtocol(None)
    )
    transport = StringTransport()  # Twisted's own in-memory transport
    proto.makeConnection(transport)
    return proto, transport


def feed(which: str, chunks: list[bytes], expect: int) -> float:
    proto, transport = make(which)
    received = proto.dataReceived
    start = time.perf_counter()
    for chunk in chunks:
        received(chunk)
    elapsed = time.perf_counter() - start
    written = len(transport.value())
    assert written == expect, (which, written, expect)
    return elapsed


def small(frames: int, size: int, rounds: int) -> dict[str, Any]:
    stream = (struct.pack("!I", size) + b"x" * size) * frames
    chunks = [stream[i : i + READ] for i in range(0, len(stream), READ)]
    times: dict[str, list[float]] = {"twisted": [], "sockproto": []}
    for _ in range(rounds):
        for which in ("twisted", "sockproto"):
            times[which].append(feed(which, chunks, len(stream)))
    rates = {k: frames / statistics.median(v) for k, v in times.items()}
    return {"frames": frames, "size": size, "rate": rates, "ratio": rates["sockproto"] / rates["twisted"]}


def large_once(which: str, size: int) -> float:
    """One frame of ``size`` bytes in 64 KiB reads (run in a fresh process)."""
    stream = struct.pack("!I", size) + b"\x5a" * size
    chunks = [stream[i : i + READ] for i in range(0, len(stream), READ)]
    del stream
    return feed(which, chunks, size + 4)


def large(size: int) -> dict[str, Any]:
    seconds = {}
    for which in ("sockproto", "twisted"):
        out = subprocess.run(
            [sys.executable, __file__, "--large-once", which, str(size)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        seconds[which] = float(out.stdout)
    return {"size": size, "seconds": seconds, "ratio": seconds["twisted"] / seconds["sockproto"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds (smoke test)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--large-once", nargs=2, metavar=("WHICH", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.large_once:
        print(large_once(args.large_once[0], int(args.large_once[1])))
        return
    frames, mib = (20_000, 1) if args.quick else (200_000, 32)
    s = small(frames, 100, 2 if args.quick else args.rounds)
    big = large(mib * 2**20)
    if args.json:
        print(json.dumps({"small": s, "large": big}))
        return
    print(f"100-byte frames, {frames} per round, median of {2 if args.quick else args.rounds} rounds:")
    print(f"  Int32StringReceiver  {s['rate']['twisted']:>12,.0f} frames/s")
    print(f"  sockproto INT32      {s['rate']['sockproto']:>12,.0f} frames/s")
    print(f"  ratio sockproto/twisted small: {s['ratio']:.2f}x (target >= 1.5x)")
    print(f"one {mib} MiB frame in 64 KiB reads (fresh process each):")
    print(f"  Int32StringReceiver  {big['seconds']['twisted']:>10.3f} s")
    print(f"  sockproto INT32      {big['seconds']['sockproto']:>10.3f} s")
    print(f"  ratio sockproto/twisted large: {big['ratio']:.1f}x faster (target >= 50x)")


if __name__ == "__main__":
    main()

"""sockproto.compat's Int32StringReceiver vs Twisted's, side by side, in memory.

The same int32-prefixed stream goes to a subclass of each class (the same
``stringReceived``, counting strings and bytes) through Twisted's in-memory
``StringTransport``, and the ratios are printed:

- large strings (1, 16, 32, 64 MiB) in 64 KiB reads: seconds, drop-in at least 20x
  faster at 32 MiB.  Twisted's class re-joins its buffer on every read (twisted#6358):
  quadratic, and worse past glibc's 32 MiB mmap threshold, where the outcome depends
  on the process's allocation history; so every large run is a fresh process;
- small strings (16, 100, 1000 bytes): strings/s, drop-in no slower, in 64 KiB reads
  (pipelined), in 1460-byte reads (TCP segments: strings straddle reads) and one string
  per read (request/response).

Usage: ``python benchmarks/bench_intn.py [--quick] [--rounds N] [--json]``; the full
run takes a few minutes (Twisted's 64 MiB case alone ~15-20 s), ``--quick`` seconds.
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
from twisted.protocols import basic

from sockproto import compat

READ = 65536
MIB = 2**20
CLASSES = {"twisted": basic.Int32StringReceiver, "drop-in": compat.Int32StringReceiver}


def receiver(which: str) -> Any:
    class Counting(CLASSES[which]):  # type: ignore[misc,valid-type]
        MAX_LENGTH = 2**31
        strings = 0
        total = 0

        def stringReceived(self, string: bytes) -> None:
            self.strings += 1
            self.total += len(string)

    proto = Counting()
    proto.makeConnection(StringTransport())
    return proto


def feed(which: str, reads: list[bytes], strings: int, total: int) -> float:
    """Seconds ``which`` takes to parse ``reads``, checked to give what was sent."""
    proto = receiver(which)
    received = proto.dataReceived
    start = time.perf_counter()
    for read in reads:
        received(read)
    elapsed = time.perf_counter() - start
    assert (proto.strings, proto.total) == (strings, total), (which, proto.strings, proto.total)
    return elapsed


def large_once(which: str, size: int) -> float:
    """One string of ``size`` bytes in 64 KiB reads (run in a fresh process)."""
    stream = struct.pack("!I", size) + b"\x5a" * size
    reads = [stream[i : i + READ] for i in range(0, len(stream), READ)]
    del stream
    return feed(which, reads, 1, size)


def large(size: int, runs: dict[str, int]) -> dict[str, Any]:
    """Median seconds of ``runs[which]`` fresh processes each."""
    seconds = {}
    for which, count in runs.items():
        times = []
        for _ in range(count):
            out = subprocess.run(
                [sys.executable, __file__, "--large-once", which, str(size)],
                capture_output=True, text=True, check=True, timeout=600,
            )  # fmt: skip
            times.append(float(out.stdout))
        seconds[which] = statistics.median(times)
    return {"mib": size // MIB, "seconds": seconds, "ratio": seconds["twisted"] / seconds["drop-in"]}


def small(size: int, strings: int, read: int | None, rounds: int) -> dict[str, Any]:
    """Strings/s for ``strings`` strings of ``size`` bytes, in reads of ``read`` bytes or one per read."""
    one = struct.pack("!I", size) + b"x" * size
    if read is None:
        reads = [one] * strings
    else:
        stream = one * strings
        reads = [stream[i : i + read] for i in range(0, len(stream), read)]
    times: dict[str, list[float]] = {which: [] for which in CLASSES}
    for _ in range(rounds):
        for which in CLASSES:
            times[which].append(feed(which, reads, strings, strings * size))
    # The best round: the one least disturbed by other processes (as timeit does).
    rates = {which: strings / min(t) for which, t in times.items()}
    return {
        "size": size,
        "reads": "one per read" if read is None else f"{read} B reads",
        "rate": rates,
        "ratio": rates["drop-in"] / rates["twisted"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 MiB and 100-byte strings only, seconds")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the small-string runs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--large-once", nargs=2, metavar=("WHICH", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.large_once:
        print(large_once(args.large_once[0], int(args.large_once[1])))
        return
    sizes_mib, small_sizes, strings, rounds = (
        ([1], [100], 20_000, 2) if args.quick else ([1, 16, 32, 64], [16, 100, 1000], 200_000, args.rounds)
    )
    results: dict[str, list[dict[str, Any]]] = {"large": [], "small": []}
    for mib in sizes_mib:
        results["large"].append(large(mib * MIB, {"drop-in": 1 if args.quick else 3, "twisted": 1}))
    for size in small_sizes:
        for read in (READ, 1460, None):
            results["small"].append(small(size, strings, read, rounds))
    if args.json:
        print(json.dumps(results))
        return
    print("one large string in 64 KiB reads, seconds (a fresh process per run):")
    print(f"  {'size':>8} {'Twisted':>10} {'drop-in':>10}  drop-in faster by")
    for r in results["large"]:
        s = r["seconds"]
        print(f"  {r['mib']:>4} MiB {s['twisted']:>10.3f} {s['drop-in']:>10.4f}  {r['ratio']:>8.1f}x")
    print(f"small strings, strings/s (best of {rounds} interleaved rounds of {strings}):")
    print(f"  {'size':>6} {'reads':<14} {'Twisted':>12} {'drop-in':>12}  drop-in/Twisted")
    for r in results["small"]:
        t, d = r["rate"]["twisted"], r["rate"]["drop-in"]
        print(f"  {r['size']:>4} B {r['reads']:<14} {t:>12,.0f} {d:>12,.0f}  {r['ratio']:>8.2f}x")
    for r in results["large"]:
        target = " (target >= 20x)" if r["mib"] == 32 else ""
        print(f"ratio drop-in/twisted large {r['mib']} MiB: {r['ratio']:.1f}x faster{target}")
    worst = min(results["small"], key=lambda r: r["ratio"])
    print(
        f"ratio drop-in/twisted small (worst: {worst['size']} B, {worst['reads']}): "
        f"{worst['ratio']:.2f}x (target >= 1x)"
    )


if __name__ == "__main__":
    main()

"""Instructions per read of the frame server's protocol, under callgrind: two source trees compared.

Feeds a :class:`~sockproto.frame.server.FrameServerProtocol` (``echo``, SPF/1,
``idle_timeout`` set, as the plugin runs it) reads of 64 whole 100-byte request frames
through an in-memory transport, ``--small`` then ``--large`` times, each count under
``valgrind --tool=callgrind``; the difference divided by the extra reads is the cost of
one read with start-up taken out.  Deterministic, unlike the loopback echo workload
(which swings some 10% between runs on a shared 2-core machine), so it tells whether a
change touched the hot path.

Usage: ``python benchmarks/count_frame_reads.py [TREE...]`` (default: this tree); give
an older checkout (``git worktree add /tmp/base REV``) to compare.  Needs ``valgrind``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def loop(tree: str, reads: int) -> None:
    """The loop callgrind counts (run in a child process)."""
    sys.path.insert(0, tree)
    from twisted.internet.address import IPv4Address

    from sockproto.core.header import SPF1
    from sockproto.frame.server import FrameServerFactory
    from sockproto.handlers import echo
    from sockproto.testing.memory import MemoryTransport

    factory = FrameServerFactory(echo, idle_timeout=300)
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    proto = factory.buildProtocol(address)
    transport = MemoryTransport(proto, address, address)
    proto.makeConnection(transport)  # type: ignore[arg-type]
    chunk = b"".join(SPF1.encode(b"x" * 100, kind=1, id=i + 1) for i in range(64))
    for _ in range(reads):
        proto.dataReceived(chunk)
        transport._take()  # what the peer reads: the buffer stays small


def count(tree: str, reads: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             sys.executable, __file__, "--child", tree, str(reads)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    match = re.search(r"Collected : (\d+)", done.stderr)
    if match is None:
        raise RuntimeError(done.stderr[-2000:])
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*", default=[str(ROOT)])
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=1200)
    parser.add_argument("--child", nargs=2, metavar=("TREE", "READS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        loop(args.child[0], int(args.child[1]))
        return
    for tree in args.trees:
        per_read = (count(tree, args.large) - count(tree, args.small)) / (args.large - args.small)
        print(f"{tree}: {per_read:,.0f} instructions per read of 64 frames ({per_read / 64:,.0f} per frame)")


if __name__ == "__main__":
    main()

"""The datagram benchmark runs (``--quick``) and prints both rates and its ratio."""

from __future__ import annotations

import re
import subprocess
import sys

from ..helpers import ROOT


def test_bench_datagram_quick() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_datagram.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"Twisted DatagramProtocol echo\s+[\d,]+ datagrams/s", done.stdout), done.stdout
    assert re.search(r"sockproto datagram, raw mode\s+[\d,]+ datagrams/s", done.stdout), done.stdout
    assert re.search(r"ratio sockproto/twisted datagram: \d+\.\d\dx", done.stdout), done.stdout

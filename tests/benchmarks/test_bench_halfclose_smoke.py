"""The half-close benchmark runs (``--quick``) and prints both rates and its ratio."""

from __future__ import annotations

import re
import subprocess
import sys

from ..helpers import ROOT


def test_bench_halfclose_quick() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_halfclose.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"bare Twisted half-close echo\s+[\d,]+ requests/s", done.stdout), done.stdout
    assert re.search(r"sockproto HalfCloseServer\s+[\d,]+ requests/s", done.stdout), done.stdout
    assert re.search(r"ratio sockproto/twisted: \d+\.\d\dx", done.stdout), done.stdout
    assert "failed" not in done.stdout, done.stdout

"""The ``--workers`` benchmark runs (``--quick``) and prints its figures for 1 and 2 workers."""

from __future__ import annotations

import re
import subprocess
import sys

from ..helpers import ROOT


def test_bench_workers_quick() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_workers.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for name in ("1 worker ", "2 workers "):
        pattern = rf"{name}\s+[\d,]+ requests/s\s+[\d.]+ us CPU/request\s+share max/mean \d\.\d\d"
        assert re.search(pattern, done.stdout), done.stdout
    assert re.search(r"ratio 2 workers/1: throughput \d+\.\d\dx", done.stdout), done.stdout

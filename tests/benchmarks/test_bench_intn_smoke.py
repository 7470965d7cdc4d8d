"""The IntN benchmark runs (``--quick``) and prints both measurements and its ratios."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from ..helpers import ROOT

BENCH = str(ROOT / "benchmarks" / "bench_intn.py")


def quick(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, BENCH, "--quick", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_bench_intn_quick() -> None:
    out = quick()
    assert re.search(r"1 MiB\s+\d+\.\d+\s+\d+\.\d+\s+\d+\.\dx", out), out
    assert re.search(r"100 B 65536 B reads\s+[\d,]+\s+[\d,]+\s+\d+\.\d\dx", out), out
    assert re.search(r"100 B 1460 B reads\s+[\d,]+\s+[\d,]+\s+\d+\.\d\dx", out), out
    assert re.search(r"100 B one per read\s+[\d,]+\s+[\d,]+\s+\d+\.\d\dx", out), out
    assert re.search(r"ratio drop-in/twisted large 1 MiB: \d+\.\dx faster", out), out
    assert re.search(r"ratio drop-in/twisted small \(worst: .*\): \d+\.\d\dx", out), out


def test_bench_intn_quick_json() -> None:
    results = json.loads(quick("--json"))
    assert [r["mib"] for r in results["large"]] == [1]
    assert {r["size"] for r in results["small"]} == {100}
    for r in results["large"] + results["small"]:
        assert r["ratio"] > 0

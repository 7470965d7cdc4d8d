"""The benchmark suite runs (``--quick``): every workload, every peer measured or skipped with
a reason, the table, the targets, the JSON, and the chart when matplotlib is there.

No ratio is checked: a smoke test on a shared machine cannot say which server is faster.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ..helpers import ROOT

TABLES = {
    "parse",
    "inmem-echo",
    "parse-large",
    "echo",
    "bulk",
    "udp",
    "halfclose",
    "concurrency",
    "ttfb",
    "bigframe",
    "bigframe-time",
    "idle",
}


@pytest.mark.slow
def test_bench_suite_quick(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout

    results = json.loads((tmp_path / "suite.json").read_text())
    assert {t["key"] for t in results["tables"]} == TABLES, out
    assert results["failures"] == {}
    assert results["machine"]["python"] and results["machine"]["versions"]["Twisted"]
    for table in results["tables"]:
        assert table["values"]["sockproto"], table["key"]
        for peer, values in table["values"].items():
            # >= 0: a smoke run on a loaded machine may see no UDP answer in its 0.15 s
            assert all(v >= 0 for v in values), (table["key"], peer, values)
            assert re.search(rf"^  {re.escape(peer)} +[\d,.]+ ", out, re.MULTILINE), (table["key"], peer)
    by_key = {t["key"]: t for t in results["tables"]}
    # Each server workload has every peer that serves it, or says why not.
    for key, peers in {
        "echo": ["twisted", "asyncio-streams", "asyncio-protocol", "uvloop-protocol", "raw"],
        "udp": ["twisted", "asyncio-protocol", "uvloop-protocol", "raw"],
        "halfclose": ["twisted", "asyncio-streams", "asyncio-protocol", "uvloop-streams", "raw"],
        "idle": ["twisted-bare", "sockproto-halfclose", "asyncio-protocol"],
    }.items():
        table = by_key[key]
        for peer in peers:
            assert peer in table["values"] or peer in table["skipped"], (key, peer)
            assert peer in table["ratios"] or peer in table["skipped"], (key, peer)

    assert "targets of issue 7" in out
    assert len(re.findall(r"target [<>]=? [\d.]+x: (MET|MISSED)", out)) == 9, out
    assert re.search(r"load average \(1 min\) during the run: median [\d.]+", out)

    if importlib.util.find_spec("uvloop") is None:
        assert "peer uvloop-protocol skipped: uvloop is not installed" in out
        assert by_key["echo"]["skipped"]["uvloop-protocol"].startswith("uvloop is not installed")
    else:
        assert by_key["echo"]["values"]["uvloop-protocol"]
    if importlib.util.find_spec("matplotlib") is None:
        assert "matplotlib is not installed" in out
    else:
        assert (tmp_path / "suite.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "suite.txt").read_text().startswith("sockproto benchmark suite")

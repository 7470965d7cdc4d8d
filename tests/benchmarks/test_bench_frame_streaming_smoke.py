"""The streamed-frame benchmark runs (``--quick``): digests checked, memory and ratio printed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from ..helpers import ROOT, require_tool


def test_bench_frame_streaming_quick(tmp_path: Path) -> None:
    require_tool("nc")
    out = tmp_path / "rows.json"
    script = ROOT / "benchmarks" / "bench_frame_streaming.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr  # every digest is asserted inside
    assert re.search(r"ratio sockproto/baseline \(time\): \d+\.\d+x", done.stdout), done.stdout
    rows = json.loads(out.read_text())
    assert rows["big_nc"]["peak_above_idle_mib"] < 64, rows

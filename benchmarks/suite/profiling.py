"""Sampling profiles of sockproto under load, with py-spy (``run.py --profile DIR``).

Each profile is py-spy's raw output (collapsed stacks, one ``frame;frame;... count``
line per distinct stack) and a summary next to it: the functions and lines where the
samples fall (self) and the functions on the stack (inclusive), in percent.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.suite.processes import ROOT, SERVER_CPUS, _env, _pin


def py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def record_server(pid: int, out: Path, seconds: float, load: Callable[[], Any]) -> None:
    """Sample process ``pid`` for ``seconds`` while ``load()`` runs; summarise."""
    exe = py_spy()
    if exe is None:
        print("  (no py-spy: profile skipped; pip install py-spy)", file=sys.stderr)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [exe, "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--output", str(out)]
    argv += ["--duration", str(max(1, round(seconds))), "--nonblocking"]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.3)  # let it attach
    try:
        load()
    finally:
        _, err = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0:
        print(f"  py-spy failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
        return
    summarise(out)


def record_command(module_args: list[str], out: Path) -> None:
    """Run ``python -m module_args`` under py-spy; summarise."""
    exe = py_spy()
    if exe is None:
        print("  (no py-spy: profile skipped; pip install py-spy)", file=sys.stderr)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [exe, "record", "--rate", "500", "--format", "raw", "--output", str(out), "--"]
    argv += [sys.executable, "-m", *module_args]
    subprocess.run(
        argv, cwd=ROOT, env=_env(), capture_output=True, timeout=600, check=True, preexec_fn=_pin(SERVER_CPUS)
    )
    summarise(out)


IDLE = (
    "EPollReactor.doPoll",
    "PollReactor.doPoll",
    "SelectReactor.doSelect",
    "select (",
    "BaseSelectorEventLoop",
)
"""Leaf frames that mean "waiting for the next event", left out of the percentages."""


def summarise(raw: Path, top: int = 30) -> str:
    """Write and return the self / inclusive summary of a raw py-spy profile.

    Percentages are of the busy samples: those not waiting in the reactor's poll.
    """
    own: Counter[str] = Counter()
    own_function: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        if frames[-1].startswith(IDLE):
            idle += count
            continue
        total += count
        own[frames[-1]] += count
        own_function[_function(frames[-1])] += count
        for name in {_function(f) for f in frames}:
            inclusive[name] += count
    total = max(total, 1)
    lines = [
        f"{raw.name}: {total} busy samples ({idle} more waiting in poll, left out)",
        "",
        "self, by line:",
    ]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    lines += ["", "self, by function:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own_function.most_common(top)]
    lines += ["", "inclusive (on the stack), by function:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    text = "\n".join(lines) + "\n"
    raw.with_suffix(".summary.txt").write_text(text)
    return text


def _short(frame: str) -> str:
    """Drop the directories before ``site-packages/`` or the source tree from a frame's file."""
    for marker in ("site-packages/", f"{ROOT}/"):
        head, found, tail = frame.partition(marker)
        if found:
            return head.rpartition("(")[0] + "(" + tail
    return frame


def _function(frame: str) -> str:
    """``name (file.py:12)`` -> ``name (file.py)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rpartition(':')[0]})" if ":" in where else frame

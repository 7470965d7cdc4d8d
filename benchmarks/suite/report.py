"""The printed table, the issue's targets checked against a run, and the machine it ran on."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.suite.results import REFERENCE, Table

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Target:
    """One line of the issue's "What it must show": sockproto's ratio to a peer, bounded."""

    table: str
    peer: str
    op: str  # ">=" or "<="
    bound: float
    what: str

    def check(self, tables: dict[str, Table]) -> dict[str, Any]:
        table = tables.get(self.table)
        ratios = table.sockproto_over(self.peer) if table is not None else []
        result: dict[str, Any] = {"what": self.what, "table": self.table, "peer": self.peer}
        result.update(target=f"{self.op} {self.bound:.3g}x", bound=self.bound, op=self.op)
        if not ratios:
            return {**result, "ratio": None, "met": None}
        ratio = statistics.median(ratios)
        met = ratio >= self.bound if self.op == ">=" else ratio <= self.bound
        assert table is not None
        cpu = {p: table.extras.get(p, {}).get("cpu_us") for p in (REFERENCE, self.peer)}
        if cpu[REFERENCE] and cpu[self.peer]:
            # operations per second of server CPU: what each server costs, whoever else
            # shares the machine (the throughput ratio moves with the other processes)
            result["cpu_ratio"] = statistics.median(cpu[self.peer]) / statistics.median(cpu[REFERENCE])
        return {**result, "ratio": ratio, "min": min(ratios), "max": max(ratios), "met": met}


TARGETS = [
    Target("echo", "twisted", ">=", 1.5, "framed echo, 100 B, 64 in flight: sockproto / plain Twisted"),
    Target("parse", "twisted", ">=", 2.0, "decoder alone, 100 B frames: sockproto / Int32StringReceiver"),
    Target("bulk", "twisted", ">=", 1.5, "1 MiB frames: sockproto / plain Twisted"),
    Target("bulk", "raw", ">=", 1 / 3, "1 MiB frames: within 3x of raw sockets (sockproto / raw)"),
    Target("udp", "twisted", ">=", 1.0, "UDP echo: sockproto / bare DatagramProtocol"),
    Target("halfclose", "twisted", ">=", 1.0, "half-close: sockproto / bare Twisted"),
    Target("idle", "twisted-bare", "<=", 1.5, "idle connection RSS: sockproto / bare Twisted Protocol"),
]

LINEAR_BOUND = 1.5
"""Time per MiB of the large frame over time per MiB of the smaller one, at most: "linear"."""

PEAK_BOUND = 2.5


def check_targets(tables: dict[str, Table]) -> list[dict[str, Any]]:
    results = [t.check(tables) for t in TARGETS]
    peak = tables.get("bigframe")
    if peak is not None and REFERENCE in peak.values:
        value = statistics.median(peak.values[REFERENCE])
        results.append(
            {
                "what": "one large frame: peak RSS / frame size (sockproto, absolute)",
                "table": "bigframe",
                "peer": None,
                "target": f"< {PEAK_BOUND:g}x",
                "ratio": value,
                "min": min(peak.values[REFERENCE]),
                "max": max(peak.values[REFERENCE]),
                "met": value < PEAK_BOUND,
            }
        )
    speed = tables.get("bigframe-time")
    if speed is not None and REFERENCE in speed.values:
        small = speed.extras.get(REFERENCE, {}).get("s_per_mib_small", [])
        per_round = [big / s for big, s in zip(speed.values[REFERENCE], small, strict=False) if s]
        if per_round:
            value = statistics.median(per_round)
            results.append(
                {
                    "what": "one large frame: time linear in size (s/MiB large / s/MiB small, sockproto)",
                    "table": "bigframe-time",
                    "peer": None,
                    "target": f"<= {LINEAR_BOUND:g}x",
                    "ratio": value,
                    "min": min(per_round),
                    "max": max(per_round),
                    "met": value <= LINEAR_BOUND,
                }
            )
    return results


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"


_EXTRA_LABELS = {
    "cpu_us": ("server CPU", "us/op"),
    "client_cpu_us": ("client CPU", "us/op"),
    "p50_ms": ("p50", "ms"),
    "p99_ms": ("p99", "ms"),
    "total_s": ("whole answer", "s"),
    "start_rss_mib": ("RSS at start", "MiB"),
    "peak_over_start": ("(peak - start)/size", "x"),
    "s_per_mib_small": ("smaller frame", "s/MiB"),
    "rss_mib": ("RSS", "MiB"),
}


def format_table(table: Table) -> str:
    better = "higher is better" if table.higher_is_better else "lower is better"
    lines = [f"{table.key}: {table.title} [{table.unit}, {better}]"]
    lines.append(f"  {'peer':<20} {'median':>11} {'min - max':>23}   {'/ sockproto (min - max)':<26} extras")
    for peer, s in table.summary().items():
        span = f"{fmt(s['min'])} - {fmt(s['max'])}"
        if peer == REFERENCE:
            ratio = "1"
        elif s["ratio_median"] is None:
            ratio = "-"
        else:
            ratio = f"{s['ratio_median']:.2f} ({s['ratio_min']:.2f} - {s['ratio_max']:.2f})"
        extras = ", ".join(
            f"{_EXTRA_LABELS.get(k, (k, ''))[0]} {fmt(v)} {_EXTRA_LABELS.get(k, ('', ''))[1]}".rstrip()
            for k, v in s["extras"].items()
        )
        lines.append(f"  {peer:<20} {fmt(s['median']):>11} {span:>23}   {ratio:<26} {extras}".rstrip())
    for peer, reason in table.skipped.items():
        lines.append(f"  {peer:<20} skipped: {reason}")
    for note in table.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def format_targets(targets: list[dict[str, Any]]) -> str:
    lines = ["targets of issue 7 (sockproto's ratio, median of per-round ratios, min - max):"]
    for t in targets:
        if t["ratio"] is None:
            lines.append(f"  {t['what']}: not measured in this run (target {t['target']})")
            continue
        verdict = "MET" if t["met"] else "MISSED"
        span = f"({t['min']:.2f} - {t['max']:.2f})"
        cpu = verdict_cpu = ""
        if t.get("cpu_ratio"):
            cpu = f", per server CPU second {t['cpu_ratio']:.2f}x"
            met_cpu = t["cpu_ratio"] >= t["bound"] if t["op"] == ">=" else t["cpu_ratio"] <= t["bound"]
            verdict_cpu = f" (per CPU second: {'met' if met_cpu else 'missed'})"
        lines.append(
            f"  {t['what']}: {t['ratio']:.2f}x {span}{cpu}, target {t['target']}: {verdict}{verdict_cpu}"
        )
    return "\n".join(lines)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def machine() -> dict[str, Any]:
    """The machine and the versions a run measured."""
    cpu_model = None
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.partition(":")[2].strip()
                break
    memory = None
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        memory = int(meminfo.read_text().split()[1]) * 1024
    sys.path.insert(0, str(ROOT))
    import sockproto

    status = _git("status", "--porcelain", "--", "sockproto")
    return {
        "platform": platform.platform(),
        "cpu": cpu_model,
        "cpus": os.cpu_count(),
        "memory_bytes": memory,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "versions": {
            "sockproto": sockproto.__version__,
            "Twisted": _version("twisted"),
            "uvloop": _version("uvloop"),
            "matplotlib": _version("matplotlib"),
            "psutil": _version("psutil"),
        },
        "git_commit": _git("rev-parse", "HEAD"),
        "sockproto_tree_modified": bool(status) if status is not None else None,
    }

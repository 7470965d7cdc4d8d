"""The PNG chart of a run: one panel per measured quantity, each peer relative to sockproto."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks.suite.report import fmt
from benchmarks.suite.results import REFERENCE, Table


def draw(tables: list[Table], path: Path, subtitle: str) -> str | None:
    """Write the chart to ``path``; return why not (matplotlib missing), or None."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no chart"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [t for t in tables if t.values]
    if not shown:
        return "nothing was measured: no chart"
    columns = 2
    rows = math.ceil(len(shown) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(13, 2.6 * rows + 1), squeeze=False)
    for ax, table in zip(axes.flat, shown, strict=False):
        _panel(ax, table)
    for ax in list(axes.flat)[len(shown) :]:
        ax.set_visible(False)
    fig.suptitle("sockproto benchmark suite: each peer's median over sockproto's (bars: min-max of rounds)")
    fig.text(0.5, 0.005, subtitle, ha="center", fontsize=8, color="#555555")
    fig.tight_layout(rect=(0, 0.02, 1, 0.98))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


def _panel(ax: Any, table: Table) -> None:
    summary = table.summary()
    peers = list(summary)
    ratios, lows, highs, labels = [], [], [], []
    for peer in peers:
        s = summary[peer]
        if peer == REFERENCE or s["ratio_median"] is None:
            r, lo, hi = 1.0, 1.0, 1.0
        else:
            r, lo, hi = s["ratio_median"], s["ratio_min"], s["ratio_max"]
        ratios.append(r)
        lows.append(max(r - lo, 0))
        highs.append(max(hi - r, 0))
        labels.append(f"{fmt(s['median'])} {table.unit}")
    y = list(range(len(peers)))[::-1]
    colors = ["#d62728" if p == REFERENCE else "#1f77b4" for p in peers]
    ax.barh(y, ratios, xerr=[lows, highs], color=colors, alpha=0.85, capsize=3)
    ax.set_yticks(y, peers, fontsize=8)
    ax.axvline(1.0, color="#d62728", linewidth=0.8, linestyle="--")
    spread = max(ratios) / max(min(ratios), 1e-9)
    if spread > 20:
        ax.set_xscale("log")
    better = "higher is better" if table.higher_is_better else "lower is better"
    ax.set_title(f"{table.key}: {table.title}\n(peer / sockproto, {table.unit}: {better})", fontsize=8.5)
    ax.tick_params(axis="x", labelsize=7)
    for yi, r, high, text in zip(y, ratios, highs, labels, strict=True):
        ax.text(r + high, yi, f"  {text}", va="center", fontsize=7)  # right of the min-max bar
    ax.set_xlim(right=max(r + h for r, h in zip(ratios, highs, strict=True)) * (6 if spread > 20 else 1.6))

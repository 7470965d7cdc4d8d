"""What a workload measured: per-peer values per round, and their ratios to sockproto."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

REFERENCE = "sockproto"


@dataclass
class Table:
    """One measured quantity of one workload, for every peer.

    :ivar values: peer -> every value measured (sockproto's, between the others').
    :ivar ratios: peer -> its value divided by sockproto's in the same round (for
        alternated runs, by the mean of the sockproto runs just before and after).
    :ivar extras: peer -> name -> values (server CPU per operation, latencies...).
    """

    key: str
    title: str
    unit: str
    higher_is_better: bool
    values: dict[str, list[float]] = field(default_factory=dict)
    ratios: dict[str, list[float]] = field(default_factory=dict)
    extras: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, peer: str, value: float, **extras: float | None) -> None:
        self.values.setdefault(peer, []).append(value)
        for name, extra in extras.items():
            if extra is not None:
                self.extras.setdefault(peer, {}).setdefault(name, []).append(extra)

    def summary(self) -> dict[str, dict[str, Any]]:
        """peer -> median, min, max of its values and of its ratios to sockproto."""
        out = {}
        for peer, values in self.values.items():
            ratios = self.ratios.get(peer, [1.0] * len(values) if peer == REFERENCE else [])
            out[peer] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "runs": len(values),
                "ratio_median": statistics.median(ratios) if ratios else None,
                "ratio_min": min(ratios) if ratios else None,
                "ratio_max": max(ratios) if ratios else None,
                "extras": {k: statistics.median(v) for k, v in self.extras.get(peer, {}).items()},
            }
        return out

    def sockproto_over(self, peer: str) -> list[float]:
        """sockproto's value divided by ``peer``'s, per round."""
        return [1 / r for r in self.ratios.get(peer, []) if r]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = self.summary()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Table:
        """The table :meth:`to_json` wrote (its summary is recomputed)."""
        fields = {k: v for k, v in data.items() if k != "summary"}
        return cls(**fields)


Measure = Callable[[str], dict[str, Any]]
"""Measure one peer once; return ``{"value": ..., extra: ...}``."""


def alternate(
    table: Table, peers: list[str], rounds: int, measure: Measure, progress: Callable[[str], None]
) -> None:
    """Run sockproto before and after each other peer, for ``rounds`` rounds.

    Each round goes ``sockproto, A, sockproto, B, sockproto, ...`` (the others reversed
    every other round), and each peer's ratio is its value over the mean of the
    sockproto runs on either side of it, which cancels most of a shared machine's drift.
    """
    others = [p for p in peers if p != REFERENCE]
    for r in range(rounds):
        order = others if r % 2 == 0 else others[::-1]
        progress(f"round {r + 1}/{rounds}")
        before = _record(table, REFERENCE, measure)
        for peer in order:
            value = _record(table, peer, measure)
            after = _record(table, REFERENCE, measure)
            table.ratios.setdefault(peer, []).append(value / ((before + after) / 2))
            before = after


def rounds_of(
    table: Table, peers: list[str], rounds: int, measure: Measure, progress: Callable[[str], None]
) -> None:
    """Measure every peer once per round, the order rotating; then :func:`ratios_by_round`.

    For quantities the machine's load hardly moves (memory), where alternating
    sockproto with each peer would only cost time.
    """
    for r in range(rounds):
        progress(f"round {r + 1}/{rounds}")
        shift = r % len(peers)
        for peer in peers[shift:] + peers[:shift]:
            _record(table, peer, measure)
    ratios_by_round(table)


def ratios_by_round(table: Table) -> None:
    """Each peer's ratio to sockproto, round by round (one value per peer per round)."""
    reference = table.values.get(REFERENCE, [])
    for peer, values in table.values.items():
        if peer != REFERENCE:
            table.ratios[peer] = [v / s for v, s in zip(values, reference, strict=False) if s]


def _record(table: Table, peer: str, measure: Measure) -> float:
    result = dict(measure(peer))
    value = float(result.pop("value"))
    table.add(peer, value, **result)
    return value

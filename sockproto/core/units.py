"""Parsing of byte sizes and durations given on command lines.

Plain Python: no Twisted import (the sans-IO rule).
"""

from __future__ import annotations

import math
import re
from typing import Final

__all__ = ["parse_duration", "parse_size", "parse_size_or_none"]

_UNITS: Final = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
}
_SIZE_RE: Final = re.compile(r"\s*(\d+)\s*([a-z]*)\s*\Z", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Parse a byte count such as ``65536``, ``64KiB``, ``16MiB`` or ``1GB``.

    Binary suffixes (``KiB``, ``MiB``, ``GiB``, or ``K``, ``M``, ``G``) count 1024s,
    decimal ones (``KB``, ``MB``, ``GB``) 1000s; case does not matter.

    :raises ValueError: with a message saying what is accepted.
    """
    match = _SIZE_RE.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"expected a size like 65536, 64KiB or 16MiB, got {text!r}")
    return int(match.group(1)) * _UNITS[unit]


def parse_size_or_none(text: str) -> int | None:
    """:func:`parse_size`, or ``None`` (no limit) for ``none`` (any case).

    :raises ValueError: with a message saying what is accepted.
    """
    if text.strip().lower() == "none":
        return None
    try:
        return parse_size(text)
    except ValueError:
        raise ValueError(f"expected a size like 65536, 64KiB or 16MiB, or none, got {text!r}") from None


def parse_duration(text: str) -> float:
    """Parse a positive duration in seconds: ``30``, ``2.5``, ``500ms``.

    :raises ValueError: with a message saying what is accepted.
    """
    raw = text.strip().lower()
    scale = 1.0
    if raw.endswith("ms"):
        raw, scale = raw[:-2], 0.001
    elif raw.endswith("s"):
        raw = raw[:-1]
    try:
        value = float(raw) * scale
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"expected a positive number of seconds like 30, 2.5 or 500ms, got {text!r}")
    return value

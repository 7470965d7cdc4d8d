"""The two answers every peer can give: the payload itself, or its SHA-256 (hex, newline).

``sha256`` is the answer of the large-frame memory workload: a few bytes, so that what
is measured is the cost of *receiving* the frame.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable


def echo(payload: bytes) -> bytes:
    return payload


def sha256(payload: bytes) -> bytes:
    return hashlib.sha256(payload).hexdigest().encode("ascii") + b"\n"


HANDLERS: dict[str, Callable[[bytes], bytes]] = {"echo": echo, "sha256": sha256}

"""Run one peer's servers in this process: ``python -m benchmarks.peers.serve PEER [options]``.

Prints one JSON line, ``{"frame": port, "udp": port, ...}``, once every socket listens
on 127.0.0.1, then serves until its standard input closes (the orchestrator's way to
stop it) or ``--lifetime`` seconds pass (so that it never outlives a crashed
orchestrator for long).  The descriptor limit is raised to the hard limit first, for
the 10,000-connection workload.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import sys
import threading
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.peers import PEERS, SERVICES

BACKLOG = 4096
"""Every peer listens with this backlog, so that connection storms cost them the same."""


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def watchdog(lifetime: float) -> None:
    """End the process when stdin closes or after ``lifetime`` seconds, whatever the framework."""

    def on_eof() -> None:
        try:
            sys.stdin.buffer.read()
        finally:
            os._exit(0)

    threading.Thread(target=on_eof, daemon=True).start()
    timer = threading.Timer(lifetime, os._exit, (3,))
    timer.daemon = True
    timer.start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peer", choices=PEERS)
    parser.add_argument("--handler", choices=("echo", "sha256"), default="echo")
    parser.add_argument("--max-payload", type=int, default=2**30)
    parser.add_argument("--services", default=None, help="comma-separated (default: all it serves)")
    parser.add_argument("--lifetime", type=float, default=1800.0)
    args = parser.parse_args()
    raise_nofile()
    watchdog(args.lifetime)
    services = tuple(args.services.split(",")) if args.services else SERVICES[args.peer]
    module: Any = importlib.import_module(f"benchmarks.peers.{PEERS[args.peer]}")

    def ready(ports: dict[str, int]) -> None:
        print(json.dumps(ports), flush=True)

    module.serve(services, args.handler, args.max_payload, ready)


if __name__ == "__main__":
    main()

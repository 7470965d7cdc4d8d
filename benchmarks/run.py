"""The benchmark suite: every workload of issue 7 against sockproto and each peer, side by side.

Usage::

    python benchmarks/run.py [--quick] [--rounds N] [--only WORKLOAD[,WORKLOAD...]]
                             [--peers PEER[,PEER...]] [--out DIR] [--profile DIR]
    python benchmarks/run.py --render DIR

Peers (:mod:`benchmarks.peers`): sockproto, plain Twisted, asyncio streams and
protocols on the default loop and on uvloop (skipped, with a note, without uvloop),
and raw blocking sockets.  Every server runs in its own process, pinned to one CPU,
every load client in another, pinned to the other CPUs; sockproto runs before and
after each other peer in every round, and each peer's ratio to sockproto is taken
round by round.  Workloads, in order: parse, echo, bulk, udp, halfclose,
concurrency, ttfb, bigframe, idle (see :mod:`benchmarks.suite.workloads`).

It prints per workload the median and min-max of each peer and its ratio to
sockproto, then the issue's targets, and writes ``suite.json``, ``suite.txt`` (the
report, with the machine and versions) and ``suite.png`` (the chart; needs
matplotlib) to ``--out`` (default ``benchmarks/results`` for a whole run; a temporary
directory with ``--quick``, ``--only`` or ``--peers``); ``--render DIR`` redraws the
last two from ``DIR/suite.json``.
``--profile DIR`` also samples the sockproto server with py-spy in each workload and
writes the profiles there.  A full run takes about 20 minutes on 2 cores; ``--quick``
(tiny sizes, one round) well under one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.peers import LABELS, PEERS, unavailable  # noqa: E402
from benchmarks.suite import chart, report  # noqa: E402
from benchmarks.suite.results import Table  # noqa: E402
from benchmarks.suite.workloads import WORKLOADS, Config  # noqa: E402


class LoadSampler:
    """Sample the load average every few seconds while the suite runs."""

    def __init__(self, every: float = 5.0) -> None:
        self.samples: list[float] = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self.samples.append(os.getloadavg()[0])
        return {
            "min": min(self.samples),
            "median": statistics.median(self.samples),
            "max": max(self.samples),
            "samples": len(self.samples),
        }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round: seconds (smoke test)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per workload (default 5; quick: 1)")
    parser.add_argument("--only", default=None, help=f"comma-separated workloads, of: {', '.join(WORKLOADS)}")
    parser.add_argument(
        "--peers", default=None, help=f"comma-separated peers (sockproto always), of: {', '.join(PEERS)}"
    )
    parser.add_argument("--out", type=Path, default=None, help="where suite.json and suite.png go")
    parser.add_argument(
        "--profile", type=Path, default=None, help="also profile sockproto with py-spy into DIR"
    )
    parser.add_argument(
        "--render", type=Path, default=None, help="only redraw DIR/suite.txt and .png from its JSON"
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    for name, known in ((args.only, WORKLOADS), (args.peers, PEERS)):
        unknown = set(name.split(",")) - set(known) if name else set()
        if unknown:
            parser.error(f"unknown: {', '.join(sorted(unknown))}")
    return args


def render(results: dict[str, Any], out: Path) -> None:
    """Write ``suite.txt`` (the report as printed, with the machine) and ``suite.png``."""
    tables = [Table.from_json(t) for t in results["tables"]]
    info, load = results["machine"], results["load_average"]
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v and k in ("Twisted", "uvloop"))
    modified = ", sockproto/ modified" if info.get("sockproto_tree_modified") else ""
    header = [
        f"sockproto benchmark suite: {results['command']}",
        f"run: {results['started']}, {results['seconds'] / 60:.1f} minutes, {results['rounds']} round(s)",
        f"machine: {info['platform']}, {info['cpu']}, {info['cpus']} CPUs, "
        f"{(info['memory_bytes'] or 0) / 2**30:.0f} GiB",
        f"versions: Python {info['python']}, {versions}, sockproto {info['versions']['sockproto']} "
        f"(git {str(info.get('git_commit'))[:10]}{modified})",
        f"load average (1 min) during the run: median {load['median']:.2f}, min {load['min']:.2f}, "
        f"max {load['max']:.2f}",
        "",
    ]
    body = [report.format_table(t) + "\n" for t in tables]
    text = "\n".join([*header, *body, report.format_targets(results["targets"])]) + "\n"
    (out / "suite.txt").write_text(text)
    subtitle = (
        f"{results['started'][:10]}, {info['cpu']}, {info['cpus']} CPUs, "
        f"Python {info['python']}, {versions}, {results['rounds']} rounds, load average {load['median']:.1f}"
    )
    why_not = chart.draw(tables, out / "suite.png", subtitle)
    print(f"note: {why_not}" if why_not else f"chart: {out / 'suite.png'}")
    if why_not and (out / "suite.png").exists():
        print(f"note: {out / 'suite.png'} is from an earlier run")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        render(json.loads((args.render / "suite.json").read_text()), args.render)
        return 0
    rounds = args.rounds or (1 if args.quick else 5)
    cfg = Config.quick_run(rounds) if args.quick else Config.full(rounds)
    cfg.profile = args.profile
    workloads = args.only.split(",") if args.only else list(WORKLOADS)
    peers = (
        list(PEERS)
        if not args.peers
        else ["sockproto", *[p for p in args.peers.split(",") if p != "sockproto"]]
    )
    # Only a whole run replaces the committed results (docs/performance shows them).
    partial = args.quick or args.only or args.peers
    out = args.out or (
        Path(tempfile.gettempdir()) / "sockproto-bench" if partial else ROOT / "benchmarks" / "results"
    )
    out.mkdir(parents=True, exist_ok=True)
    for peer in peers:
        reason = unavailable(peer)
        if reason:
            print(f"note: peer {peer} skipped: {reason}", flush=True)

    started = datetime.now(timezone.utc)
    clock = time.monotonic()
    sampler = LoadSampler()
    tables: list[Table] = []
    failures: dict[str, str] = {}
    for name in workloads:
        t0 = time.monotonic()

        def progress(message: str, name: str = name) -> None:
            print(f"[{name}] {message}", file=sys.stderr, flush=True)

        progress("start")
        try:
            produced = WORKLOADS[name](cfg, peers, progress)
        except Exception as e:  # report it, go on with the other workloads
            failures[name] = f"{type(e).__name__}: {e}"
            print(f"[{name}] FAILED: {failures[name]}", file=sys.stderr, flush=True)
            continue
        tables.extend(produced)
        for table in produced:
            print(report.format_table(table), flush=True)
            print(flush=True)
        progress(f"done in {time.monotonic() - t0:.0f} s")
    load = sampler.stop()
    elapsed = time.monotonic() - clock

    targets = report.check_targets({t.key: t for t in tables})
    print(report.format_targets(targets))
    print(
        f"load average (1 min) during the run: median {load['median']:.2f}, "
        f"min {load['min']:.2f}, max {load['max']:.2f}; {elapsed / 60:.1f} minutes"
    )
    results = {
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(elapsed, 1),
        "command": " ".join(["python benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "rounds": rounds,
        "machine": report.machine(),
        "load_average": load,
        "peers": {p: LABELS[p] for p in peers},
        "tables": [t.to_json() for t in tables],
        "targets": targets,
        "failures": failures,
    }
    (out / "suite.json").write_text(json.dumps(results, indent=1) + "\n")
    render(results, out)
    print(f"results: {out / 'suite.json'}")
    if failures:
        for name, error in failures.items():
            print(f"FAILED workload {name}: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

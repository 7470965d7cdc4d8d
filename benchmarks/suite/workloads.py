"""The workloads of issue 7: what each one runs, against which peers, and how it is measured.

Every server runs in its own process (:mod:`benchmarks.peers.serve`), every load client
in another (:mod:`benchmarks.suite.loadgen`); only the parse workload runs parsers
in-process, each run in a fresh process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.peers import PEERS, SERVICES, unavailable
from benchmarks.suite import profiling
from benchmarks.suite.processes import (
    FreshServers,
    IdleClient,
    Server,
    run_client,
    run_python,
    start_servers,
    stop_servers,
)
from benchmarks.suite.results import REFERENCE, Table, alternate, ratios_by_round, rounds_of

MIB = 2**20
Progress = Callable[[str], None]


@dataclass
class Config:
    """Sizes and durations of a run (:meth:`full` or :meth:`quick`)."""

    rounds: int = 5
    warmup: float = 0.3
    seconds: float = 1.0
    bulk_size: int = MIB
    bulk_in_flight: int = 4
    concurrency_conns: int = 1000
    concurrency_in_flight: int = 10
    halfclose_clients: int = 16
    parse_frames: int = 200_000
    parse_large: int = 64 * MIB
    ttfb_size: int = 64 * MIB
    big_size: int = 256 * MIB
    big_small_size: int = 64 * MIB
    idle_connections: int = 10_000
    settle: float = 0.3  # seconds a fresh server or new connections get before memory is read
    alternate: bool = True  # sockproto before and after each peer (else once per round)
    warm: bool = True  # a warm-up run against each server before the rounds
    profile: Path | None = None
    quick: bool = False

    @classmethod
    def full(cls, rounds: int) -> Config:
        return cls(rounds=rounds)

    @classmethod
    def quick_run(cls, rounds: int) -> Config:
        """Tiny sizes, every peer and workload still exercised: seconds, for the smoke test."""
        return cls(
            rounds=rounds,
            warmup=0.05,
            seconds=0.15,
            bulk_size=256 * 1024,
            concurrency_conns=50,
            parse_frames=20_000,
            parse_large=2 * MIB,
            ttfb_size=2 * MIB,
            big_size=8 * MIB,
            big_small_size=2 * MIB,
            idle_connections=200,
            settle=0.05,
            alternate=False,
            warm=False,
            quick=True,
        )


def compare(
    cfg: Config, table: Table, peers: list[str], measure: Callable[[str], dict[str, Any]], progress: Progress
) -> None:
    """Alternate sockproto with each peer (full runs) or measure each once per round (quick)."""
    (alternate if cfg.alternate else rounds_of)(table, peers, cfg.rounds, measure, progress)


def batch_of(cfg: Config, peers: list[str]) -> list[str]:
    """The servers one round of :func:`compare` uses: sockproto once more per other peer."""
    others = [p for p in peers if p != REFERENCE]
    return peers + [REFERENCE] * (len(others) if cfg.alternate and REFERENCE in peers else 0)


def _size(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB else f"{n // 1024} KiB"


def usable(peers: list[str], service: str, table: Table) -> list[str]:
    """The peers that serve ``service`` here; the others are noted as skipped."""
    chosen = []
    for peer in peers:
        reason = unavailable(peer)
        if reason is None and service not in SERVICES[peer]:
            reason = f"no {service} server of this kind"
        if reason is None:
            chosen.append(peer)
        else:
            table.skipped[peer] = reason
    return chosen


# -- server workloads: one server per peer for the whole workload, alternated rounds ----


def _served(
    cfg: Config,
    table: Table,
    peers: list[str],
    service: str,
    client: Callable[[int, float, float], dict[str, Any]],
    value: Callable[[dict[str, Any]], float],
    progress: Progress,
    stretch: float = 1.0,
) -> list[Table]:
    """Measure ``service`` of every peer with ``client(port, warmup, seconds)``.

    ``stretch`` multiplies the warm-up and measured durations (for heavier clients).
    """
    chosen = usable(peers, service, table)
    warmup, seconds = cfg.warmup * stretch, cfg.seconds * stretch
    servers = start_servers(chosen, services=service)
    try:
        for server in servers.values() if cfg.warm else ():  # imports, first connections, caches
            run_client(client(server.ports[service], 0.0, warmup), timeout=120)

        def measure(peer: str) -> dict[str, Any]:
            server = servers[peer]
            before = server.cpu_seconds()
            out = run_client(client(server.ports[service], warmup, seconds), timeout=300)
            cpu = server.cpu_seconds() - before
            return {
                "value": value(out),
                "cpu_us": cpu / out["ops"] * 1e6 if out.get("ops") else None,
                "client_cpu_us": out.get("client_cpu_us"),
                "p50_ms": out.get("p50_ms"),
                "p99_ms": out.get("p99_ms"),
            }

        compare(cfg, table, chosen, measure, progress)
        if cfg.profile is not None and REFERENCE in servers:
            server = servers[REFERENCE]
            duration = 4.0 if not cfg.quick else 1.0
            profiling.record_server(
                server.pid,
                cfg.profile / f"{table.key}.txt",
                duration,
                lambda: run_client(client(server.ports[service], 0.2, duration + 0.5), timeout=120),
            )
    finally:
        stop_servers(servers)
    return [table]


def stream_client(conns: int, in_flight: int, size: int) -> Callable[[int, float, float], dict[str, Any]]:
    def client(port: int, warmup: float, seconds: float) -> dict[str, Any]:
        return {
            "kind": "stream",
            "port": port,
            "conns": conns,
            "in_flight": in_flight,
            "size": size,
            "warmup": warmup,
            "seconds": seconds,
        }

    return client


def echo(cfg: Config, peers: list[str], progress: Progress) -> list[Table]:
    table = Table("echo", "framed echo, 100-byte frames, 64 in flight, 1 connection", "frames/s", True)
    return _served(cfg, table, peers, "frame", stream_client(1, 64, 100), lambda o: o["rate"], progress)


def bulk(cfg: Config, peers: list[str], progress: Progress) -> list[Table]:
    size = cfg.bulk_size
    table = Table(
        "bulk",
        f"bulk echo, {_size(size)} frames, {cfg.bulk_in_flight} in flight, 1 connection",
        "MiB/s",
        True,
    )
    client = stream_client(1, cfg.bulk_in_flight, size)
    return _served(cfg, table, peers, "frame", client, lambda o: o["bytes_rate"] / MIB, progress)


def concurrency(cfg: Config, peers: list[str], progress: Progress) -> list[Table]:
    n, k = cfg.concurrency_conns, cfg.concurrency_in_flight
    table = Table(
        "concurrency", f"{n:,} connections x {k} requests in flight, 100-byte echo", "frames/s", True
    )
    table.notes.append("p50/p99: latency from queueing a request to its whole answer, at the client")
    client = stream_client(n, k, 100)
    stretch = 1.0 if cfg.quick else 1.5
    return _served(cfg, table, peers, "frame", client, lambda o: o["rate"], progress, stretch=stretch)


def udp(cfg: Config, peers: list[str], progress: Progress) -> list[Table]:
    table = Table("udp", "UDP echo, 100-byte datagrams, 32 in flight", "datagrams/s", True)
    table.notes.append("client: bench_datagram.py's (a lost datagram is replaced after 0.2 s)")

    def client(port: int, warmup: float, seconds: float) -> dict[str, Any]:
        return {"kind": "udp", "port": port, "warmup": warmup, "seconds": seconds}

    return _served(cfg, table, peers, "udp", client, lambda o: o["rate"], progress)


def halfclose(cfg: Config, peers: list[str], progress: Progress) -> list[Table]:
    clients = cfg.halfclose_clients
    table = Table(
        "halfclose",
        f"half-close echo, a new connection per 100-byte request, {clients} clients",
        "requests/s",
        True,
    )
    table.notes.append("client: bench_halfclose.py's; the raw peer serves one connection at a time")

    def client(port: int, warmup: float, seconds: float) -> dict[str, Any]:
        return {
            "kind": "halfclose",
            "port": port,
            "seconds": warmup + seconds,
            "size": 100,
            "concurrency": clients,
        }

    return _served(cfg, table, peers, "halfclose", client, lambda o: o["rate"], progress)


# -- one large frame: a fresh server per run -------------------------------------------


def ttfb(cfg: Config, peers: list[str], progress: Progress) -> list[Table]:
    size = cfg.ttfb_size
    table = Table("ttfb", f"time to the first answer byte, one {size // MIB} MiB frame (echo)", "s", False)
    table.notes.append("a fresh server per run; time from the client's first byte sent")
    chosen = usable(peers, "frame", table)
    fresh = FreshServers(batch_of(cfg, chosen), services="frame")

    def measure(peer: str) -> dict[str, Any]:
        server = fresh.take(peer)
        try:
            out = run_client(
                {"kind": "big", "port": server.ports["frame"], "size": size, "handler": "echo"}, 900
            )
        finally:
            server.stop()
        return {"value": out["ttfb"], "total_s": out["total"]}

    try:
        compare(cfg, table, chosen, measure, progress)
    finally:
        fresh.close()
    return [table]


def bigframe(cfg: Config, peers: list[str], progress: Progress) -> list[Table]:
    size, small = cfg.big_size, cfg.big_small_size
    peak = Table(
        "bigframe", f"peak RSS receiving one {size // MIB} MiB frame (sha256 answer)", "x frame size", False
    )
    speed = Table("bigframe-time", f"time for one {size // MIB} MiB frame (sha256 answer)", "s/MiB", False)
    peak.notes.append("peak = the server process's VmHWM (interpreter included), over the frame size")
    chosen = [p for p in usable(peers, "frame", peak) if p != "twisted"]
    if "twisted" in peers:
        peak.skipped["twisted"] = (
            "Int32StringReceiver is quadratic: minutes for 256 MiB (see parse-large, ttfb)"
        )
    speed.skipped = dict(peak.skipped)

    fresh = FreshServers(
        [*chosen, REFERENCE] if REFERENCE in chosen else chosen, handler="sha256", services="frame"
    )

    def once(peer: str, n: int) -> tuple[dict[str, int], dict[str, Any]]:
        server = fresh.take(peer)
        try:
            time.sleep(cfg.settle)
            before = server.memory()
            out = run_client(
                {"kind": "big", "port": server.ports["frame"], "size": n, "handler": "sha256"}, 900
            )
            after = server.memory()
        finally:
            server.stop()
        return {"before": before["rss"], "peak": after["peak"]}, out

    def measure(peer: str) -> dict[str, Any]:
        memory, out = once(peer, size)
        extras: dict[str, Any] = {}
        speed.add(peer, out["total"] / (size / MIB))
        if peer == REFERENCE:
            _, small_out = once(peer, small)
            extras["s_per_mib_small"] = small_out["total"] / (small / MIB)
        return {
            "value": memory["peak"] / size,
            "start_rss_mib": memory["before"] / MIB,
            "peak_over_start": (memory["peak"] - memory["before"]) / size,
            **extras,
        }

    try:
        rounds_of(peak, chosen, cfg.rounds, measure, progress)
    finally:
        fresh.close()
    ratios_by_round(speed)
    speed.extras[REFERENCE] = {"s_per_mib_small": peak.extras[REFERENCE]["s_per_mib_small"]}
    speed.notes.append(
        f"sockproto's extra s_per_mib_small: the same for a {small // MIB} MiB frame (linearity)"
    )
    return [peak, speed]


# -- idle connections: a fresh server per run --------------------------------------------

IDLE = {
    "sockproto": ("sockproto", "frame"),
    "sockproto-halfclose": ("sockproto", "halfclose"),
    "twisted-bare": ("twisted", "bare"),
    "twisted": ("twisted", "frame"),
    "asyncio-streams": ("asyncio-streams", "frame"),
    "asyncio-protocol": ("asyncio-protocol", "frame"),
    "uvloop-streams": ("uvloop-streams", "frame"),
    "uvloop-protocol": ("uvloop-protocol", "frame"),
}


def idle(cfg: Config, peers: list[str], progress: Progress) -> list[Table]:
    n = cfg.idle_connections
    table = Table("idle", f"RSS per idle connection, {n:,} connections open", "bytes/conn", False)
    table.notes.append("twisted-bare: a bare twisted.internet.protocol.Protocol, the target's baseline")
    if "raw" in peers:
        table.skipped["raw"] = "a thread per connection: 10,000 threads is not how idle connections are held"
    chosen = []
    for entry, (peer, _) in IDLE.items():
        if peer in peers:
            reason = unavailable(peer)
            if reason is None:
                chosen.append(entry)
            else:
                table.skipped[entry] = reason

    fresh = FreshServers(chosen, lambda entry: Server(IDLE[entry][0], services=IDLE[entry][1]))

    def measure(entry: str) -> dict[str, Any]:
        service = IDLE[entry][1]
        server = fresh.take(entry)
        try:
            time.sleep(cfg.settle)
            base, fds = server.memory()["rss"], server.open_fds()
            client = IdleClient(server.ports[service], n)
            try:
                client.wait_ready(timeout=120)
                deadline = time.monotonic() + 60
                while server.open_fds() < fds + n:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{entry}: only {server.open_fds() - fds} of {n} connections accepted"
                        )
                    time.sleep(0.05)
                time.sleep(cfg.settle)
                rss = server.memory()["rss"]
            finally:
                client.close()
        finally:
            server.stop()
        return {"value": (rss - base) / n, "rss_mib": rss / MIB}

    try:
        rounds_of(table, chosen, cfg.rounds, measure, progress)
    finally:
        fresh.close()
    return [table]


# -- parsing alone, in-process ---------------------------------------------------------

PARSE_PEERS = ["sockproto", "sockproto-frames", "twisted", "simple"]


def parse(cfg: Config, peers: list[str], progress: Progress) -> list[Table]:
    frames = cfg.parse_frames
    small = Table("parse", "decoder alone, 100-byte frames in 64 KiB reads", "frames/s", True)
    small.notes.append(
        "simple: a bytearray + struct parser; sockproto: FrameDecoder(INT32, frame_type=bytes).feed,"
        " payloads as stringReceived gets them; sockproto-frames: the same building a Frame per frame"
    )
    inmem = Table(
        "inmem-echo", "echo protocol in memory (StringTransport), 100-byte frames", "frames/s", True
    )
    inmem.notes.append("the protocol's own cost, no reactor: Int32StringReceiver vs FrameServerProtocol")
    large = Table(
        "parse-large", f"decoder alone, one {cfg.parse_large // MIB} MiB frame in 64 KiB reads", "s", False
    )
    large.notes.append("a fresh process per run")

    def rate(mode: str) -> Callable[[str], dict[str, Any]]:
        def measure(peer: str) -> dict[str, Any]:
            out = run_python("benchmarks.suite.parse", [mode, peer, str(frames), "100"], timeout=300)
            return {"value": frames / json.loads(out)[0]}

        return measure

    def seconds(peer: str) -> dict[str, Any]:
        out = run_python("benchmarks.suite.parse", ["large", peer, str(cfg.parse_large)], timeout=900)
        return {"value": json.loads(out)}

    progress("100-byte frames")
    compare(cfg, small, PARSE_PEERS, rate("small"), progress)
    progress("in-memory echo")
    compare(cfg, inmem, ["sockproto", "twisted"], rate("echo"), progress)
    progress("one large frame")
    compare(cfg, large, PARSE_PEERS, seconds, progress)
    if cfg.profile is not None:
        for mode in ("small", "echo"):
            profiling.record_command(
                ["benchmarks.suite.parse", mode, "sockproto", str(frames * 5), "100", "2"],
                cfg.profile / f"parse-{mode}.txt",
            )
    return [small, inmem, large]


WORKLOADS: dict[str, Callable[[Config, list[str], Progress], list[Table]]] = {
    "parse": parse,
    "echo": echo,
    "bulk": bulk,
    "udp": udp,
    "halfclose": halfclose,
    "concurrency": concurrency,
    "ttfb": ttfb,
    "bigframe": bigframe,
    "idle": idle,
}
"""Every workload, in the order of a full run."""

ALL_PEERS = list(PEERS)

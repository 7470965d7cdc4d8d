"""Soak: 500 clients mixing good requests with every bad input, against the real twistd plugins.

Four servers run as ``twistd -n`` child processes (frame SPF/1, frame INT32, half-close,
datagram); for ``SOCKPROTO_SOAK_SECONDS`` (60 by default) 500 concurrent clients send
them good requests interleaved with broken headers, lengths at and around every limit,
truncated frames, resets mid-frame, slowloris connections, oversized requests and a
datagram flood.  The test then checks that:

- every good request was answered correctly (and every bad input got its documented
  outcome, see :mod:`tests.soak.load`);
- each server's RSS, sampled every second from /proc, stayed flat after the warm-up
  (the curve is written to ``rss.csv`` in the test's tmp dir and summarised);
- no server leaks a file descriptor (/proc/PID/fd counted before and after), nor does
  the client process (/proc/self/fd);
- no server logged a traceback, and every server was still alive at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from . import load
from .servers import Flatness, Sampler, Server, flatness, make_servers, raise_nofile, twistd_help

DURATION = float(os.environ.get("SOCKPROTO_SOAK_SECONDS", "60"))
WARMUP = min(20.0, DURATION / 3)  # seconds of load before the RSS baseline is taken
WINDOW = min(10.0, DURATION / 6)  # seconds averaged at each end of the RSS comparison
GROWTH_KIB = 12 * 1024  # RSS growth allowed after the warm-up: a leak of 100 B per request shows
FRAME_MAX, INT32_MAX, HALFCLOSE_MAX, REQUEST_TIMEOUT, IDLE_TIMEOUT = 65536, 4096, 65536, 5.0, 3.0
WORKERS = {"frame": 200, "int32": 60, "halfclose": 200, "datagram": 36, "flood": 4}  # 500 sockets
FLOOD_RATE = 1000  # datagrams per second per flooding socket, from 127.0.0.2
SEED = int(os.environ.get("SOCKPROTO_SOAK_SEED", "8"))

SERVICES = [
    ("frame", "sockproto-frame", False, ["--handler", "sha256", "--max-payload", "64KiB"]),
    (
        "int32",
        "sockproto-frame",
        False,
        ["--handler", "sha256", "--header", "int32", "--max-payload", "4KiB"],
    ),
    (
        "halfclose",
        "sockproto-halfclose",
        False,
        ["--handler", "sha256", "--max-request", "64KiB", "--request-timeout", f"{REQUEST_TIMEOUT:g}"],
    ),
    ("datagram", "sockproto-datagram", True, []),  # echo: an answer never outgrows its request
]


Scenario = Callable[[], Awaitable[None]]


async def worker(
    name: str, until: float, pick: Callable[[], tuple[str, Scenario]], tally: load.Tally
) -> None:
    """Run scenarios until ``until``; each one is bounded, and any unexpected error is a failure."""
    while time.monotonic() < until:
        what, scenario = pick()
        try:
            await asyncio.wait_for(scenario(), load.SCENARIO_TIMEOUT)
        except TimeoutError:
            tally.fail(f"{name}: {what} did not finish in {load.SCENARIO_TIMEOUT:g} s")
        except (OSError, asyncio.IncompleteReadError) as e:
            tally.fail(f"{name}: {what}: {e!r}")


def weighted(
    rng: random.Random, table: list[tuple[int, str, Scenario]]
) -> Callable[[], tuple[str, Scenario]]:
    weights = [w for w, _, _ in table]

    def pick() -> tuple[str, Scenario]:
        _, what, scenario = rng.choices(table, weights)[0]
        return what, scenario

    return pick


async def sweep(ports: dict[str, int], tally: load.Tally) -> None:
    """Truncated frames at every offset, each followed by a FIN and by a reset."""
    frame = load.spf1(load.REQ, 77, b"12345678")
    int32 = load.INT32.pack(8) + b"12345678"
    jobs = []
    for offset in range(len(frame)):
        for fin in (True, False):
            jobs.append(load.truncated(ports["frame"], frame, offset, fin, tally, "frame"))
    for offset in range(len(int32)):
        for fin in (True, False):
            jobs.append(load.truncated(ports["int32"], int32, offset, fin, tally, "int32"))
    for offset in range(20):  # no framing: only a reset can leave a half-close request incomplete
        jobs.append(load.truncated(ports["halfclose"], b"r" * 20, offset, False, tally, "halfclose"))
    await asyncio.gather(*jobs)
    # datagrams cut at every offset: dropped; the whole one after them is the only one answered
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(("127.0.0.1", ports["datagram"]))
        whole = load.spf1(load.REQ, 99, b"12345678")
        for offset in range(len(whole)):
            await loop.sock_sendall(sock, whole[:offset])
            tally.bad["datagram: cut at every offset (too short or truncated)"] += 1
        client = load.DatagramClient(ports["datagram"], tally, random.Random(SEED))
        await client.exchange(sock)


async def soak(ports: dict[str, int], tally: load.Tally, idle: float | None) -> None:
    until = time.monotonic() + DURATION
    await sweep(ports, tally)
    tasks = []
    for n in range(WORKERS["frame"]):
        rng = random.Random(f"frame{SEED}/{n}")
        c = load.FrameClient(ports["frame"], FRAME_MAX, tally, rng)
        ref = load.spf1(load.REQ, 5, os.urandom(20))

        def cut_frame(c: load.FrameClient = c, ref: bytes = ref) -> Awaitable[None]:
            offset = c.rng.randrange(len(ref))
            return load.truncated(c.port, ref, offset, c.rng.random() < 0.5, c.tally, "frame")

        table: list[tuple[int, str, Scenario]] = [
            (70, "pipeline", c.pipeline),
            (6, "broken header", c.broken_header),
            (5, "length field short", c.length_off),
            (5, "4 GiB length", c.huge_length),
            (4, "slowloris", lambda c=c: c.slowloris(0.2)),
            (10, "truncated", cut_frame),
        ]
        tasks.append(worker("frame", until, weighted(rng, table), tally))
    for n in range(WORKERS["int32"]):
        rng = random.Random(f"int32{SEED}/{n}")
        i = load.Int32Client(ports["int32"], INT32_MAX, tally, rng)
        ref32 = load.INT32.pack(20) + os.urandom(20)

        def cut_int32(i: load.Int32Client = i, ref: bytes = ref32) -> Awaitable[None]:
            offset = i.rng.randrange(len(ref))
            return load.truncated(i.port, ref, offset, i.rng.random() < 0.5, i.tally, "int32")

        table32: list[tuple[int, str, Scenario]] = [
            (82, "pipeline", i.pipeline),
            (15, "truncated", cut_int32),
            (3, "slowloris", lambda i=i: i.slowloris(0.5, idle)),
        ]
        tasks.append(worker("int32", until, weighted(rng, table32), tally))
    for n in range(WORKERS["halfclose"]):
        rng = random.Random(f"halfclose{SEED}/{n}")
        h = load.HalfCloseClient(ports["halfclose"], HALFCLOSE_MAX, REQUEST_TIMEOUT, tally, rng)
        table = [
            (75, "request", h.request),
            (15, "abandon", h.abandon),
            (10, "slowloris", lambda h=h: h.slowloris(0.25)),
        ]
        tasks.append(worker("halfclose", until, weighted(rng, table), tally))
    for n in range(WORKERS["datagram"]):
        tasks.append(datagram_worker(ports["datagram"], until, tally, random.Random(f"datagram{SEED}/{n}")))
    for n in range(WORKERS["flood"]):
        flood_rng = random.Random(f"flood{SEED}/{n}")
        tasks.append(load.flood(ports["datagram"], "127.0.0.2", until, tally, flood_rng, FLOOD_RATE))
    running = [asyncio.ensure_future(t) for t in tasks]
    _, late = await asyncio.wait(running, timeout=DURATION + load.SCENARIO_TIMEOUT + 30)
    for task in late:
        task.cancel()
        tally.fail("a client task did not stop")
    await asyncio.gather(*running, return_exceptions=True)
    for task in running:
        if not task.cancelled() and task.exception() is not None:
            tally.fail(f"a client task failed: {task.exception()!r}")


async def datagram_worker(port: int, until: float, tally: load.Tally, rng: random.Random) -> None:
    client = load.DatagramClient(port, tally, rng)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(("127.0.0.1", port))
        while time.monotonic() < until:
            await client.exchange(sock)
            await asyncio.sleep(0.1)  # stay under the default --rate-limit of one host, when there is one


def own_fds() -> dict[int, str]:
    """This process's descriptors and what they are."""
    gc.collect()
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the directory's own descriptor, closed since
            found[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
    return found


def report(servers: list[Server], tmp_path: Path, tally: load.Tally) -> dict[str, Flatness]:
    """Write the RSS curves to rss.csv, print a summary; return each server's flatness."""
    curve = tmp_path / "rss.csv"
    with curve.open("w") as out:
        out.write("server,seconds,rss_kib\n")
        for server in servers:
            out.writelines(f"{server.name},{t:.1f},{kib}\n" for t, kib in server.rss)
    result = {s.name: flatness(s.rss, WARMUP, WINDOW) for s in servers}
    print(f"\nsoak: {DURATION:g} s, RSS curves in {curve}")
    for server in servers:
        f = result[server.name]
        curve_mib = " ".join(f"{kib // 1024}" for t, kib in server.rss[:: max(1, len(server.rss) // 16)])
        print(
            f"  {server.name:9} RSS MiB after warm-up {f.warm / 1024:.1f}, at end {f.end / 1024:.1f}, "
            f"growth {f.growth / 1024:+.1f}, peak {f.peak / 1024:.1f}; curve: {curve_mib}"
        )
    for service in sorted(tally.good_sent):
        sent, right = tally.good_sent[service], tally.good_answered[service]
        print(f"  {service:9} good requests {sent}, answered right {right}")
    print(f"  bad inputs tried: {sum(tally.bad.values())}")
    for what, n in sorted(tally.bad.items()):
        print(f"    {n:8} {what}")
    return result


@pytest.mark.slow
@pytest.mark.timeout(DURATION + 240)
def test_soak(tmp_path: Path) -> None:
    raise_nofile()
    options = {name: twistd_help(plugin) for name, plugin, _, _ in SERVICES}
    limits = ("--max-connections", "--idle-timeout", "--handler-timeout", "--rate-limit", "--amplification")
    print(
        "limits of this version:", {name: [o for o in limits if o in text] for name, text in options.items()}
    )
    services = [(name, plugin, udp, list(args)) for name, plugin, udp, args in SERVICES]
    idle = None
    if "--idle-timeout" in options["int32"]:  # the limit exists: slowloris on INT32 meets it
        idle = IDLE_TIMEOUT
        services[1][3].extend(["--idle-timeout", f"{IDLE_TIMEOUT:g}"])
    servers = make_servers(tmp_path, services)
    for server in servers:
        server.start(tmp_path)
    sampler = Sampler(servers)
    tally = load.Tally()
    try:
        for server in servers:
            server.wait_ready()
        time.sleep(1)
        fds_before = {s.name: s.fds() for s in servers}
        client_fds = own_fds()
        sampler.start()
        sampler.started_at = time.monotonic()
        asyncio.run(soak({s.name: s.port for s in servers}, tally, idle))
        alive = {s.name: s.alive() for s in servers}
        fds_after = {s.name: s.settle_fds(fds_before[s.name]) for s in servers}
        client_fds_after = own_fds()
        sampler.stop()
        rss = report(servers, tmp_path, tally)
    finally:
        sampler.stop()
        logs = {s.name: s.stop() for s in servers}
    for name, log in logs.items():  # the services' own counts, where they log them at the end
        print(
            *(
                f"  {name} says: {line.split('] ', 1)[-1]}"
                for line in log.splitlines()
                if " stopped: " in line
            )
        )
    print(
        f"  server fds before {fds_before}, after {fds_after}; client fds {client_fds} -> {client_fds_after}"
    )
    assert all(alive.values()), f"a server died: {alive}; logs in {tmp_path}"
    assert not tally.failures, "\n".join(tally.failures[:50])
    for service in ("frame", "int32", "halfclose", "datagram"):
        assert tally.good_sent[service] > 0, f"no good {service} request was sent"
        assert tally.good_answered[service] == tally.good_sent[service]
    assert fds_after == fds_before, f"file descriptors leaked: before {fds_before}, after {fds_after}"
    assert client_fds_after == client_fds, (
        f"the clients leaked descriptors: {client_fds} -> {client_fds_after}"
    )
    for name, f in rss.items():
        assert f.growth <= GROWTH_KIB, f"{name}: RSS grew {f.growth} KiB after the warm-up (see rss.csv)"
    for name, log in logs.items():
        assert "Traceback" not in log and "Unhandled" not in log, f"{name} logged an error:\n{log[-3000:]}"

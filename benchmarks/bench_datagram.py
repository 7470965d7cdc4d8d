"""Datagram service (raw mode) vs a bare Twisted DatagramProtocol echo, side by side.

Each server runs alone in a fresh subprocess on 127.0.0.1; this process is the load
client: a connected UDP socket keeping 32 datagrams of 100 bytes in flight (each
answer received sends the next datagram) for a fixed time, after a warm-up.  The two
servers are alternated over several rounds and the median datagrams/s of each is
printed with the ratio sockproto/twisted (target >= 0.9x: the safety of reading whole
datagrams, normalizing peers and counting drops must cost little).

Usage: ``python benchmarks/bench_datagram.py [--quick] [--rounds N] [--seconds S]``
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IN_FLIGHT = 32
PAYLOAD = b"d" * 100
SERVERS = ("twisted", "sockproto")


def serve(which: str, lifetime: float) -> None:
    """Run one echo server on 127.0.0.1 (this is the subprocess); print its port."""
    sys.path.insert(0, str(ROOT))
    from twisted.internet import reactor
    from twisted.internet.protocol import DatagramProtocol

    from sockproto.datagram import DatagramServerFactory, UDPServerEndpoint
    from sockproto.handlers import echo

    class Echo(DatagramProtocol):
        def datagramReceived(self, datagram: bytes, addr: Any) -> None:
            self.transport.write(datagram, addr)

    def listening(port: Any) -> None:
        print(port.getHost().port, flush=True)
        start[0] = time.process_time()

    def report() -> None:
        print(f"cpu {time.process_time() - start[0]}", flush=True)

    start = [0.0]
    reactor.addSystemEventTrigger("before", "shutdown", report)

    if which == "twisted":
        listening(reactor.listenUDP(0, Echo(), interface="127.0.0.1"))
    else:
        factory = DatagramServerFactory(echo, mode="raw")
        UDPServerEndpoint(reactor, 0, "127.0.0.1").listen(factory).addCallback(listening)
    reactor.callLater(lifetime, reactor.stop)  # never outlive a crashed parent for long
    reactor.run()  # SIGTERM stops it (Twisted's own handler)


def load(port: int, warmup: float, seconds: float) -> dict[str, float]:
    """Keep IN_FLIGHT datagrams in flight to ``port`` for ``seconds``; return the answer rate."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", port))
        s.settimeout(0.2)
        for _ in range(IN_FLIGHT):
            s.send(PAYLOAD)
        lost = 0
        answers = 0
        total = 0
        start = time.perf_counter()
        measure_from = start + warmup
        stop = measure_from + seconds
        counted = 0
        while True:
            try:
                s.recv(65536)
            except TimeoutError:
                lost += 1  # a datagram was lost: put another in flight
            else:
                answers += 1
                total += 1
            now = time.perf_counter()
            if now >= stop:
                break
            if now >= measure_from and not counted:
                counted = answers
                measure_from = now
            s.send(PAYLOAD)
        elapsed = now - measure_from
    return {"rate": (answers - counted) / elapsed, "lost": lost, "answers": total}


def run_once(which: str, warmup: float, seconds: float) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", which, "--lifetime", str(warmup + seconds + 30)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            proc.kill()
            raise RuntimeError(f"{which} server did not start: {line!r} {proc.communicate()[1]}")
        result = load(int(line), warmup, seconds)
    finally:
        if proc.poll() is None:
            proc.terminate()
        out, _ = proc.communicate(timeout=30)
    cpu = [float(w.split()[1]) for w in out.splitlines() if w.startswith("cpu ")]
    if cpu and result["answers"]:
        result["cpu_us"] = cpu[0] / result["answers"] * 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds (smoke test)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per run")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--lifetime", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.lifetime)
        return
    rounds, warmup, seconds = (1, 0.2, 0.5) if args.quick else (args.rounds, 0.5, args.seconds)
    rates: dict[str, list[float]] = {which: [] for which in SERVERS}
    cpu: dict[str, list[float]] = {which: [] for which in SERVERS}
    ratios = []
    lost = 0
    for i in range(rounds):
        for which in SERVERS if i % 2 == 0 else SERVERS[::-1]:
            result = run_once(which, warmup, seconds)
            rates[which].append(result["rate"])
            cpu[which].extend([result["cpu_us"]] if "cpu_us" in result else [])
            lost += int(result["lost"])
        # Each round runs both servers back to back: their ratio is less affected by the
        # rest of the machine than the rates themselves.
        ratios.append(rates["sockproto"][-1] / rates["twisted"][-1])
    median = {which: statistics.median(values) for which, values in rates.items()}
    cpu_us = {which: statistics.median(values) for which, values in cpu.items() if values}
    ratio = statistics.median(ratios)
    cpu_ratio = cpu_us["twisted"] / cpu_us["sockproto"] if len(cpu_us) == 2 else None
    if args.json:
        print(json.dumps({"rates": rates, "median": median, "ratios": ratios, "ratio": ratio,
                          "cpu_us": cpu_us, "cpu_ratio": cpu_ratio, "lost": lost}))  # fmt: skip
        return
    print(
        f"UDP echo, {IN_FLIGHT} datagrams of {len(PAYLOAD)} bytes in flight, "
        f"median of {rounds} round(s) of {seconds:g} s, servers in subprocesses:"
    )
    for which, label in (
        ("twisted", "Twisted DatagramProtocol echo"),
        ("sockproto", "sockproto datagram, raw mode"),
    ):
        cost = f"  ({cpu_us[which]:.2f} us of server CPU per datagram)" if which in cpu_us else ""
        print(f"  {label:<30} {median[which]:>10,.0f} datagrams/s{cost}")
    if lost:
        print(f"  ({lost} datagrams lost and replaced)")
    print(f"  ratio sockproto/twisted datagram: {ratio:.2f}x (median of per-round ratios; target >= 0.9x)")
    if cpu_ratio is not None:
        # Datagrams per second of server CPU: what each server costs, whatever else the
        # machine runs (the wall-clock rates above move with the machine's load).
        print(f"  ratio sockproto/twisted per server CPU second: {cpu_ratio:.2f}x")


if __name__ == "__main__":
    main()

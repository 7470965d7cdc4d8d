"""Half-close server vs a bare Twisted half-close echo server, side by side, over loopback TCP.

Both servers run in their own process (the default reactor), each answering every
request by echoing it.  A load process keeps 8 clients busy, a new connection per
request (connect, send, ``shutdown(SHUT_WR)``, read to EOF, check the answer), against
one server at a time; the servers alternate over several rounds.  It prints the
requests/s of each, the server CPU time per request (Linux), and the ratio
sockproto/twisted, the median of the rounds' ratios (target >= 0.9x: what sockproto adds
per connection, the handler contract, limits, request timeout and connection tracking,
must cost under 10%).

Usage: ``python benchmarks/bench_halfclose.py [--quick] [--rounds N] [--seconds S]``
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONCURRENCY = 8
SERVERS = ("twisted", "sockproto")


# -- the servers (each in its own process) ---------------------------------------------


def serve(which: str) -> None:
    """Listen on an ephemeral loopback port, print it, serve until stdin closes."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.stdio import StandardIO
    from zope.interface import implementer

    @implementer(IHalfCloseableProtocol)
    class BareEcho(Protocol):
        """What a Twisted user writes for half-close echo, with nothing else."""

        def connectionMade(self) -> None:
            self.chunks: list[bytes] = []

        def dataReceived(self, data: bytes) -> None:
            self.chunks.append(data)

        def readConnectionLost(self) -> None:
            self.transport.write(b"".join(self.chunks))  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]

        def writeConnectionLost(self) -> None:
            pass

    class StopOnEOF(Protocol):
        def connectionLost(self, reason: Any = None) -> None:
            reactor.stop()  # type: ignore[attr-defined]

    if which == "twisted":
        factory: Any = Factory.forProtocol(BareEcho)
    else:
        from sockproto import HalfCloseServerFactory
        from sockproto.handlers import echo

        factory = HalfCloseServerFactory(echo)
    factory.noisy = False

    def listening(port: Any) -> None:
        print(port.getHost().port, flush=True)

    TCP4ServerEndpoint(reactor, 0, backlog=1024, interface="127.0.0.1").listen(factory).addCallback(listening)
    StandardIO(StopOnEOF())
    reactor.run()  # type: ignore[attr-defined]


# -- the load (its own process) --------------------------------------------------------


def load(port: int, seconds: float, size: int, concurrency: int) -> dict[str, Any]:
    """Run ``concurrency`` clients for ``seconds``; a new connection per request."""
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    sel = selectors.DefaultSelector()
    address = ("127.0.0.1", port)
    done = errors = 0
    state: dict[socket.socket, list[Any]] = {}

    def start() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        code = s.connect_ex(address)
        if code not in (0, errno.EINPROGRESS):
            raise OSError(code, "connect")
        state[s] = [memoryview(payload), []]
        sel.register(s, selectors.EVENT_WRITE)

    for _ in range(concurrency):
        start()
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while True:
        now = time.perf_counter()
        if now >= deadline:
            break
        for key, events in sel.select(deadline - now):
            s: socket.socket = key.fileobj  # type: ignore[assignment]
            pending, chunks = state[s]
            try:
                if events & selectors.EVENT_WRITE:
                    if pending:
                        sent = s.send(pending)
                        pending = state[s][0] = pending[sent:]
                    if not pending:
                        s.shutdown(socket.SHUT_WR)
                        sel.modify(s, selectors.EVENT_READ)
                    continue
                data = s.recv(65536)
                if data:
                    chunks.append(data)
                    continue
                ok = b"".join(chunks) == payload
            except OSError:
                ok = False
            sel.unregister(s)
            s.close()
            del state[s]
            done += ok
            errors += not ok
            start()
    elapsed = time.perf_counter() - started
    for s in state:
        s.close()
    return {"requests": done, "errors": errors, "seconds": elapsed}


# -- the orchestrator ------------------------------------------------------------------


def cpus() -> tuple[set[int], set[int]] | None:
    """One CPU for the servers, the others for the load, when there are two or more."""
    try:
        available = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None
    if len(available) < 2:
        return None
    return {available[0]}, set(available[1:])


def pinned(cpu_set: set[int] | None) -> Any:
    """A ``preexec_fn`` pinning the child to ``cpu_set`` (so the load never steals the server's CPU)."""
    if cpu_set is None:
        return None
    return lambda: os.sched_setaffinity(0, cpu_set)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (Linux), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spawn_server(which: str, cpu_set: set[int] | None) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", which],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        preexec_fn=pinned(cpu_set),  # sched_setaffinity only, before exec
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"the {which} server did not start")
    return proc, int(line)


def run_load(port: int, seconds: float, size: int, cpu_set: set[int] | None) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--load", str(port), "--seconds", str(seconds), "--size", str(size)]
    out = subprocess.run(
        argv,
        capture_output=True,
        check=True,
        timeout=seconds + 60,
        preexec_fn=pinned(cpu_set),  # sched_setaffinity only, before exec
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def compare(rounds: int, seconds: float, size: int) -> dict[str, Any]:
    server_cpus, load_cpus = cpus() or (None, None)
    servers = {which: spawn_server(which, server_cpus) for which in SERVERS}
    try:
        for which in SERVERS:  # warm up: imports, first connections
            run_load(servers[which][1], min(seconds, 0.5), size, load_cpus)
        rates: dict[str, list[float]] = {which: [] for which in SERVERS}
        cpu_us: dict[str, list[float]] = {which: [] for which in SERVERS}
        errors = 0
        for r in range(rounds):
            for which in SERVERS if r % 2 == 0 else SERVERS[::-1]:
                proc, port = servers[which]
                before = cpu_seconds(proc.pid)
                result = run_load(port, seconds, size, load_cpus)
                after = cpu_seconds(proc.pid)
                rates[which].append(result["requests"] / result["seconds"])
                if before is not None and after is not None and result["requests"]:
                    cpu_us[which].append((after - before) / result["requests"] * 1e6)
                errors += result["errors"]
    finally:
        for proc, _ in servers.values():
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    median = {which: statistics.median(v) for which, v in rates.items()}
    # Each round runs both servers back to back: the median of the per-round ratios
    # cancels the drift of a shared machine's load better than a ratio of medians.
    ratios = [ours / bare for ours, bare in zip(rates["sockproto"], rates["twisted"], strict=True)]
    return {
        "rounds": rounds,
        "seconds": seconds,
        "size": size,
        "pinned": server_cpus is not None,
        "rates": rates,
        "rate": median,
        "cpu_us": {which: statistics.median(v) if v else None for which, v in cpu_us.items()},
        "errors": errors,
        "ratios": ratios,
        "ratio": statistics.median(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short rounds, a few seconds (smoke test)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each round per server")
    parser.add_argument("--size", type=int, default=100, help="request size in bytes")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--load", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.load:
        print(json.dumps(load(args.load, args.seconds, args.size, CONCURRENCY)))
        return
    rounds, seconds = (2, 0.5) if args.quick else (args.rounds, args.seconds)
    result = compare(rounds, seconds, args.size)
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{args.size}-byte requests, {CONCURRENCY} concurrent clients, a new connection per request, "
        f"medians of {rounds} alternated rounds of {seconds:g} s per server:"
    )
    for which, label in (
        ("twisted", "bare Twisted half-close echo"),
        ("sockproto", "sockproto HalfCloseServer"),
    ):
        cpu = result["cpu_us"][which]
        per_request = f"  ({cpu:.0f} us server CPU per request)" if cpu is not None else ""
        print(f"  {label:<29} {result['rate'][which]:>10,.0f} requests/s{per_request}")
    if result["errors"]:
        print(f"  WARNING: {result['errors']} requests failed")
    print(f"  ratio sockproto/twisted: {result['ratio']:.2f}x (target >= 0.9x)")


if __name__ == "__main__":
    main()

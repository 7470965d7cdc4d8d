"""``--workers``: what a second worker process buys, measured on loopback (issue 14 part 2).

Runs the installed ``twistd -n sockproto-frame`` with 1 worker (today's single process)
and with 2 (``--workers 2``, sharing the parent's socket; ``--reuse-port`` too unless
``--quick``), a handler answering its pid.  The load generator is this process, pinned to
CPU 0, keeping 32 connections busy (one request in flight each) for a few seconds.  It
prints for each run:

- requests/s;
- server CPU per request (the user + system time of the parent and its workers, /proc);
- the per-worker share of the requests (max/mean: 1.0 is even).

Throughput can only scale if the workers have CPU to spare beside the load generator.
The box has 2 cores and the generator takes one, so each server process is capped
(cgroup v1 ``cpu.cfs_quota_us``, as root) at ``--cap`` of a CPU: 1 worker gets one cap,
2 workers two, and the throughput ratio 2/1 shows whether the work spreads.  Without
cgroups the servers are pinned to CPU 1 with taskset instead, which caps 1 and 2 workers
alike (the ratio is then ~1x by construction, and says so).

Usage: ``python benchmarks/bench_workers.py [--quick] [--seconds S] [--cap FRACTION]``
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CGROUP = Path("/sys/fs/cgroup/cpu")
CONNECTIONS = 32
HANDLER = "import os\n_PID = str(os.getpid()).encode()\n\ndef pid(request):\n    return _PID\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / os.sysconf("SC_CLK_TCK")


class Caps:
    """One cgroup per server process capped at ``cap`` of a CPU, or taskset to CPU 1."""

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self.groups: list[Path] = []
        self.cgroups = os.geteuid() == 0 and (CGROUP / "cpu.cfs_quota_us").exists()

    def apply(self, pid: int) -> None:
        if self.cgroups:
            group = CGROUP / f"sockproto-bench-{pid}"
            try:
                group.mkdir(exist_ok=True)
                (group / "cpu.cfs_period_us").write_text("100000")
                (group / "cpu.cfs_quota_us").write_text(str(int(self.cap * 100000)))
                (group / "cgroup.procs").write_text(str(pid))
                self.groups.append(group)
                return
            except OSError:
                self.cgroups = False
        subprocess.run(["taskset", "-p", "-c", "1", str(pid)], capture_output=True, check=False)

    def close(self) -> None:
        for group in self.groups:
            for _ in range(50):
                try:
                    group.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)

    @property
    def how(self) -> str:
        return f"cgroup cap {self.cap:g} CPU each" if self.cgroups else "taskset to CPU 1 (shared)"


def request(ident: int) -> bytes:
    return struct.pack(">2sBBII", b"SP", 1, 1, ident, 1) + b"x"


def load(port: int, seconds: float) -> tuple[int, Counter[int]]:
    """Keep CONNECTIONS connections busy for ``seconds``; return answers and answers per pid."""
    selector = selectors.DefaultSelector()
    buffers: dict[socket.socket, bytes] = {}
    for i in range(CONNECTIONS):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        s.sendall(request(i))
        buffers[s] = b""
        selector.register(s, selectors.EVENT_READ)
    by_pid: Counter[int] = Counter()
    answers = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for key, _ in selector.select(0.5):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            data = buffers[s] + s.recv(65536)
            while len(data) >= 12 and len(data) >= 12 + struct.unpack(">I", data[8:12])[0]:
                size = 12 + struct.unpack(">I", data[8:12])[0]
                by_pid[int(data[12:size])] += 1
                answers += 1
                data = data[size:]
                s.send(request(answers))
            buffers[s] = data
    for s in buffers:
        s.close()
    selector.close()
    return answers, by_pid


def run(workers: int, reuse_port: bool, seconds: float, caps: Caps, workdir: Path) -> dict[str, float]:
    port = free_port()
    args = ["--handler", "bench_worker_handlers:pid", "--listen", f"tcp:{port}:interface=127.0.0.1"]
    args += ["--workers", str(workers)] + (["--reuse-port"] if reuse_port else [])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(workdir)}
    command = [str(BIN / "twistd"), "--pidfile=", "-n", "sockproto-frame", *args]
    quiet = subprocess.DEVNULL
    server = subprocess.Popen(command, cwd=workdir, env=env, stdout=quiet, stderr=quiet)
    try:
        servers = [server.pid]
        deadline = time.monotonic() + 20
        while True:
            servers = [server.pid] + (children(server.pid) if workers > 1 else [])
            try:
                if len(servers) == 1 + (workers if workers > 1 else 0):
                    load(port, 0.3)  # warm up; every worker listening
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.1)
        for pid in servers[1:] if workers > 1 else servers:
            caps.apply(pid)
        load(port, 0.3)
        cpu = cpu_seconds(servers)
        answers, by_pid = load(port, seconds)
        cpu = cpu_seconds(servers) - cpu
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    shares = list(by_pid.values()) + [0] * (workers - len(by_pid))
    return {
        "rps": answers / seconds,
        "cpu_us": cpu / max(answers, 1) * 1e6,
        "share": max(shares) / (sum(shares) / len(shares)) if answers else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, shared socket only (smoke test)")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--cap", type=float, default=0.3, help="CPU fraction each server process gets")
    options = parser.parse_args()
    seconds = options.seconds or (1.0 if options.quick else 6.0)
    os.sched_setaffinity(0, {0})
    caps = Caps(options.cap)
    configs = [(1, False), (2, False)] + ([] if options.quick else [(2, True)])
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "bench_worker_handlers.py").write_text(HANDLER)
        try:
            results = {(w, r): run(w, r, seconds, caps, workdir) for w, r in configs}
        finally:
            caps.close()
    print(f"sockproto-frame --workers, {CONNECTIONS} connections, load pinned to CPU 0, {caps.how}")
    for (workers, reuse), r in results.items():
        name = f"{workers} worker{'s' if workers > 1 else ''}{' --reuse-port' if reuse else ''}"
        print(f"{name:<24} {r['rps']:>10,.0f} requests/s  {r['cpu_us']:7.1f} us CPU/request  "
              f"share max/mean {r['share']:.2f}")  # fmt: skip
    one = results[(1, False)]
    for key, r in results.items():
        if key != (1, False):
            name = f"{key[0]} workers{' --reuse-port' if key[1] else ''}"
            print(f"ratio {name}/1: throughput {r['rps'] / one['rps']:.2f}x, "
                  f"CPU/request {r['cpu_us'] / one['cpu_us']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()

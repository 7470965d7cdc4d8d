"""Streamed half-close uploads: peak server memory and throughput against ``nc | sha256sum``.

Runs the installed ``twistd -n sockproto-halfclose --handler sha256 --max-request none``
(the streaming sha256) and measures:

- ``2GiB nc``: ``head -c 2G /dev/zero | nc -N`` into it: seconds, and the server's peak
  RSS (``VmHWM``) above its idle RSS (target: under 64 MiB);
- ``2GiB sockproto``: the same body through ``sockproto halfclose`` reading stdin;
- ``1GiB file``: ``cat FILE | nc -N`` into the server, against ``cat FILE | nc -N``
  into ``nc -l | sha256sum`` (the same transfer and digest with no Python at all),
  median of ``--rounds``; the ratio is sockproto's time over the baseline's (target <= 2).

Usage: ``python benchmarks/bench_streaming.py [--quick] [--rounds N] [--json PATH]``
(``--quick``: 256 MiB and 128 MiB instead of 2 GiB and 1 GiB, one round).  Linux only
(``/proc``); needs ``nc`` (netcat-openbsd) and ``sha256sum``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
MiB = 1024**2
GiB = 1024**3
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def memory(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for {pid}")


def timed(shell: str) -> tuple[float, str]:
    """Run ``shell``; return (seconds, its stdout)."""
    started = time.perf_counter()
    done = subprocess.run(shell, shell=True, capture_output=True, text=True, env=ENV, check=True, timeout=600)
    return time.perf_counter() - started, done.stdout.strip()


def baseline(path: Path) -> tuple[float, str]:
    """``cat FILE | nc -N`` into ``nc -l | sha256sum``: seconds and the digest."""
    port = free_port()
    listener = subprocess.Popen(
        f"nc -l -d 127.0.0.1 {port} | sha256sum", shell=True, stdout=subprocess.PIPE, text=True
    )
    wait_for_port_by_retry(port)
    started = time.perf_counter()
    subprocess.run(f"cat {path} | nc -N 127.0.0.1 {port}", shell=True, check=True, timeout=600)
    out, _ = listener.communicate(timeout=600)
    return time.perf_counter() - started, out.split()[0]


def wait_for_port_by_retry(port: int) -> None:
    """Wait for ``nc -l`` without connecting to it (a probe would be its one connection)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if f":{port:04X} " in Path("/proc/net/tcp").read_text():
            return
        time.sleep(0.02)
    raise RuntimeError("nc -l did not listen")


def options(doc: str) -> tuple[argparse.Namespace, int, int, int]:
    """The command line of the streaming benchmarks (this one and ``bench_frame_streaming.py``):
    the arguments, the big body's size, the file's size and the rounds; the tools checked."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    big, file_size, rounds = (256 * MiB, 128 * MiB, 1) if args.quick else (2 * GiB, GiB, args.rounds)
    for tool in ("nc", "sha256sum", "head", "cat"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required")
    return args, big, file_size, rounds


def main() -> None:
    args, big, file_size, rounds = options(__doc__)
    rows: dict[str, Any] = {"cpus": os.cpu_count(), "big": big, "file": file_size, "rounds": rounds}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = subprocess.Popen(
            [str(BIN / "twistd"), "--pidfile=", "-n", "sockproto-halfclose",
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--handler", "sha256",
             "--max-request", "none", "--request-timeout", "600", "--handler-timeout", "600"],
            cwd=tmp, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for_port(port)
            time.sleep(0.5)
            idle = memory(server.pid, "VmRSS")
            rows["idle_rss_mib"] = round(idle / MiB, 1)
            seconds, out = timed(f"head -c {big} /dev/zero | nc -N 127.0.0.1 {port}")
            rows["big_nc"] = {
                "seconds": round(seconds, 2), "mib_s": round(big / MiB / seconds),
                "peak_above_idle_mib": round((memory(server.pid, "VmHWM") - idle) / MiB, 1), "digest": out,
            }  # fmt: skip
            client = f"{BIN / 'python'} -m sockproto halfclose 127.0.0.1:{port} --timeout 600"
            seconds, out2 = timed(f"head -c {big} /dev/zero | {client}")
            rows["big_sockproto_client"] = {
                "seconds": round(seconds, 2), "mib_s": round(big / MiB / seconds),
                "peak_above_idle_mib": round((memory(server.pid, "VmHWM") - idle) / MiB, 1),
                "same_digest": out2 == out,
            }  # fmt: skip
            path = Path(tmp) / "body.bin"
            with path.open("wb") as f:
                block = os.urandom(MiB)
                for i in range(file_size // MiB):
                    f.write(i.to_bytes(8, "big") + block[8:])
            ours, theirs = [], []
            for _ in range(rounds):
                seconds, digest = timed(f"cat {path} | nc -N 127.0.0.1 {port}")
                ours.append(seconds)
                base_seconds, base_digest = baseline(path)
                theirs.append(base_seconds)
                assert digest == base_digest, (digest, base_digest)
            ours_s, theirs_s = statistics.median(ours), statistics.median(theirs)
            rows["file"] = {
                "sockproto_seconds": round(ours_s, 2), "baseline_seconds": round(theirs_s, 2),
                "sockproto_mib_s": round(file_size / MiB / ours_s),
                "baseline_mib_s": round(file_size / MiB / theirs_s),
                "ratio": round(ours_s / theirs_s, 2),
            }  # fmt: skip
            rows["peak_above_idle_mib"] = round((memory(server.pid, "VmHWM") - idle) / MiB, 1)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=20)
    print(f"server idle RSS {rows['idle_rss_mib']} MiB, {rows['cpus']} CPUs")
    for name in ("big_nc", "big_sockproto_client"):
        r = rows[name]
        print(f"{name:22} {big / GiB:.2f} GiB  {r['seconds']:6.2f} s  {r['mib_s']:5} MiB/s  "
              f"peak RSS above idle {r['peak_above_idle_mib']} MiB")  # fmt: skip
    r = rows["file"]
    for label, key in (("file sockproto", "sockproto"), ("file nc|sha256sum", "baseline")):
        print(
            f"{label:22} {file_size / GiB:.2f} GiB  {r[key + '_seconds']:6.2f} s  {r[key + '_mib_s']:5} MiB/s"
        )
    print(f"ratio sockproto/baseline (time): {r['ratio']}x (target <= 2x)")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

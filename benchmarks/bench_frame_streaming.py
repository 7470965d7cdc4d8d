"""Streamed SPF/1 request frames: peak server memory and throughput against ``nc | sha256sum``.

Runs the installed ``twistd -n sockproto-frame --handler sha256 --max-payload none``
(request frames reach the streaming sha256 in pieces, never joined) and measures:

- ``2GiB nc``: an SPF/1 header then ``head -c 2G /dev/zero``, through ``nc -N``:
  seconds, and the server's peak RSS (``VmHWM``) above its idle RSS (target: under
  64 MiB);
- ``1GiB sockproto``: a 1 GiB file through ``sockproto frame --file`` (the client sends
  it as it reads it);
- ``1GiB file``: header + ``cat FILE`` through ``nc -N`` into the server, against
  ``cat FILE | nc -N`` into ``nc -l | sha256sum`` (the same transfer and digest with no
  Python at all), median of ``--rounds``; the ratio is sockproto's time over the
  baseline's (target <= 2).

Every digest is checked.  Usage: ``python benchmarks/bench_frame_streaming.py [--quick]
[--rounds N] [--json PATH]`` (``--quick``: 256 MiB and 128 MiB, one round).  Linux
only (``/proc``); needs ``nc`` (netcat-openbsd) and ``sha256sum``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_streaming import BIN, ENV, GiB, MiB, baseline, free_port, memory, options, wait_for_port


def spf1_request_header(length: int, ident: int = 1) -> bytes:
    """An SPF/1 REQUEST header announcing ``length`` payload bytes."""
    return struct.pack(">2sBBII", b"SP", 1, 1, ident, length)


def answer_digest(out: bytes) -> str:
    """The hex digest in one SPF/1 RESPONSE frame (``nc``'s output)."""
    magic, version, kind, _ident, length = struct.unpack(">2sBBII", out[:12])
    if (magic, version, kind) != (b"SP", 1, 2) or len(out) != 12 + length:
        raise RuntimeError(f"not one RESPONSE frame: {out[:80]!r}")
    return out[12:].decode().strip()


def run(argv: str) -> tuple[float, bytes]:
    """Run a shell pipeline; return (seconds, its stdout bytes)."""
    started = time.perf_counter()
    done = subprocess.run(argv, shell=True, capture_output=True, env=ENV, check=True, timeout=600)
    return time.perf_counter() - started, done.stdout


def main() -> None:
    args, big, file_size, rounds = options(__doc__)
    rows: dict[str, Any] = {"cpus": os.cpu_count(), "big": big, "file_size": file_size, "rounds": rounds}
    with tempfile.TemporaryDirectory() as tmp:
        header_big = Path(tmp) / "big.hdr"
        header_big.write_bytes(spf1_request_header(big))
        port = free_port()
        server = subprocess.Popen(
            [str(BIN / "twistd"), "--pidfile=", "-n", "sockproto-frame",
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--handler", "sha256",
             "--max-payload", "none", "--handler-timeout", "600"],
            cwd=tmp, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for_port(port)
            run(f": | nc -N 127.0.0.1 {port}")  # a first connection: what it loads counts as idle
            idle = memory(server.pid, "VmRSS")
            rows["idle_rss_mib"] = round(idle / MiB, 1)
            zeros = hashlib.sha256()
            block = bytes(MiB)
            for _ in range(big // MiB):
                zeros.update(block)
            seconds, out = run(f"(cat {header_big}; head -c {big} /dev/zero) | nc -N 127.0.0.1 {port}")
            assert answer_digest(out) == zeros.hexdigest(), out
            rows["big_nc"] = {
                "seconds": round(seconds, 2), "mib_s": round(big / MiB / seconds),
                "peak_above_idle_mib": round((memory(server.pid, "VmHWM") - idle) / MiB, 1),
            }  # fmt: skip
            path = Path(tmp) / "body.bin"
            digest = hashlib.sha256()
            with path.open("wb") as f:
                block = os.urandom(MiB)
                for i in range(file_size // MiB):
                    chunk = i.to_bytes(8, "big") + block[8:]
                    digest.update(chunk)
                    f.write(chunk)
            client = f"{BIN / 'python'} -m sockproto frame 127.0.0.1:{port} --timeout 600 --file {path}"
            seconds, out = run(client)
            assert out.decode().strip() == digest.hexdigest(), out
            rows["file_sockproto_client"] = {
                "seconds": round(seconds, 2), "mib_s": round(file_size / MiB / seconds),
                "peak_above_idle_mib": round((memory(server.pid, "VmHWM") - idle) / MiB, 1),
            }  # fmt: skip
            header_file = Path(tmp) / "file.hdr"
            header_file.write_bytes(spf1_request_header(file_size))
            ours, theirs = [], []
            for _ in range(rounds):
                seconds, out = run(f"(cat {header_file}; cat {path}) | nc -N 127.0.0.1 {port}")
                assert answer_digest(out) == digest.hexdigest()
                ours.append(seconds)
                base_seconds, base_digest = baseline(path)
                assert base_digest == digest.hexdigest(), base_digest
                theirs.append(base_seconds)
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
    for name, size in (("big_nc", big), ("file_sockproto_client", file_size)):
        r = rows[name]
        print(f"{name:22} {size / GiB:.2f} GiB  {r['seconds']:6.2f} s  {r['mib_s']:5} MiB/s  "
              f"peak RSS above idle {r['peak_above_idle_mib']} MiB")  # fmt: skip
    r = rows["file"]
    for label, key in (("file sockproto", "sockproto"), ("file nc|sha256sum", "baseline")):
        print(
            f"{label:22} {file_size / GiB:.2f} GiB  {r[key + '_seconds']:6.2f} s  {r[key + '_mib_s']:5} MiB/s"
        )
    print(f"ratio sockproto/baseline (time): {r['ratio']}x (target <= 2x)")
    print(f"server peak RSS above idle over the whole run: {rows['peak_above_idle_mib']} MiB (target < 64)")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Run the coverage-guided fuzz targets of :mod:`targets` with atheris, for a bounded time.

Usage (from the repository root)::

    python tests/fuzz/run.py --seconds 25              # every target, 25 s each
    python tests/fuzz/run.py --target decoder --seconds 300
    python tests/fuzz/run.py --replay crash-0123abcd --target decoder

Each target runs in its own child process under libFuzzer (through atheris), with the
sockproto modules instrumented for coverage, a corpus seeded with valid inputs, an
RSS limit (libFuzzer's ``-rss_limit_mb``), an address-space limit (``RLIMIT_AS``: a
decoder that trusted a length field and allocated for it would fail with
``MemoryError``) and a per-input time limit.  A failing input is printed (as a Python
bytes literal) with the command that replays it, and the exit status is 1.  Without
atheris (it ships wheels for Linux and macOS only) the run is skipped with the reason,
exit status 0, unless ``--require`` is given.

The tree beside this script is fuzzed, not an installed copy.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

RSS_LIMIT_MB = 1024
"""libFuzzer's limit on the child's resident memory."""

ADDRESS_SPACE_LIMIT = 4 * 1024**3
"""The child's RLIMIT_AS: far above its needs, far below what a length field can announce."""

TARGET_NAMES = ("decoder", "datagram", "canary")
"""The targets of :mod:`targets`; ``canary`` fails on purpose, to test this runner."""

DEFAULT_TARGETS = ("decoder", "datagram")

MAX_LEN = 8192
"""The longest input tried: room for several frames at and around small limits."""


def _child(target: str, libfuzzer_args: list[str]) -> None:
    """Fuzz ``target`` in this process (the child): instrument, set limits, run libFuzzer."""
    import resource

    import atheris

    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))
    sys.path[:0] = [str(ROOT), str(HERE)]
    with atheris.instrument_imports(include=["sockproto", "targets"]):
        import targets
    atheris.Setup([sys.argv[0], *libfuzzer_args], targets.TARGETS[target])
    atheris.Fuzz()


def _replay(target: str, paths: list[str]) -> int:
    """Run ``target`` on each file in plain Python; the first failure propagates."""
    sys.path[:0] = [str(ROOT), str(HERE)]
    import targets

    for path in paths:
        data = Path(path).read_bytes()
        print(f"replaying {path} ({len(data)} bytes) on {target}: {data!r}"[:2000], flush=True)
        targets.TARGETS[target](data)
    print("no failure", flush=True)
    return 0


def _fuzz(target: str, seconds: int, workdir: Path) -> bool:
    """Fuzz ``target`` for ``seconds`` in a child process; report any failing input."""
    sys.path[:0] = [str(ROOT), str(HERE)]
    import targets

    corpus = workdir / f"corpus-{target}"
    artifacts = workdir / f"artifacts-{target}"
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    for n, seed in enumerate(targets.seeds(target)):
        (corpus / f"seed-{n}").write_bytes(seed)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        target,
        "--",
        f"-max_total_time={seconds}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-max_len={MAX_LEN}",
        "-timeout=20",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
        str(corpus),
    ]
    started = time.monotonic()
    print(f"fuzzing {target} for {seconds} s", flush=True)
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=seconds + 120,
            check=False,
            cwd=workdir,
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") if isinstance(e.stdout, bytes) else (e.stdout or "")
        print(f"FAIL: {target}: the fuzzer did not stop within {seconds + 120} s\n{out}", flush=True)
        return False
    elapsed = time.monotonic() - started
    log = result.stdout + result.stderr
    stats = [line for line in log.splitlines() if line.startswith(("stat::", "Done ", "#"))]
    summary = stats[-1] if stats else "(no stats)"
    found = sorted(p for p in artifacts.iterdir() if p.is_file())
    if result.returncode == 0 and not found:
        runs = next((ln for ln in log.splitlines() if ln.startswith("stat::number_of_executed_units")), "")
        count = runs.split(":")[-1].strip() or "?"
        print(f"ok: {target}: {elapsed:.1f} s, {count} inputs; {summary}", flush=True)
        return True
    print(f"FAIL: {target}: exit status {result.returncode} after {elapsed:.1f} s", flush=True)
    print(log[-12000:], flush=True)
    for path in found:
        data = path.read_bytes()
        shown = repr(data) if len(data) <= 4096 else repr(data[:4096]) + f"... ({len(data)} bytes)"
        print(f"failing input {path.name} ({len(data)} bytes): {shown}", flush=True)
        print(f"replay: python {Path(__file__).resolve()} --replay {path} --target {target}", flush=True)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=25, help="fuzzing time per target (default 25)")
    parser.add_argument("--target", action="append", choices=TARGET_NAMES, help="(repeatable)")
    parser.add_argument("--workdir", type=Path, help="keep corpus and artifacts here (default: a temp dir)")
    parser.add_argument("--replay", nargs="+", metavar="FILE", help="run the target on these inputs and stop")
    parser.add_argument("--require", action="store_true", help="fail, not skip, if atheris is missing")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.child:
        _child(args.child, [a for a in rest if a != "--"])
        return 0
    chosen = args.target or list(DEFAULT_TARGETS)
    if args.replay:
        if len(chosen) != 1:
            parser.error("--replay needs one --target")
        return _replay(chosen[0], args.replay)
    if importlib.util.find_spec("atheris") is None:
        reason = (
            f"SKIPPED: atheris is not installed for {sys.executable} "
            "(pip install 'sockproto[fuzz]'; it has wheels for Linux and macOS on CPython 3.10-3.13)"
        )
        print(reason, flush=True)
        return 1 if args.require else 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sockproto-fuzz-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ok = all([_fuzz(t, args.seconds, workdir) for t in chosen])
    if ok and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)  # kept on failure: it holds the failing inputs
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())

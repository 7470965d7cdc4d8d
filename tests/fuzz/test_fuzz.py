"""Run each fuzz target for a bounded time; a failing input fails the test and is printed.

The fuzzing itself is in ``run.py`` (atheris, in a child process per target); these
tests run it as CI does and check the runner reports what it finds.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from . import targets

RUN = Path(__file__).resolve().parent / "run.py"
SECONDS = int(os.environ.get("SOCKPROTO_FUZZ_SECONDS", "25"))


def require_atheris() -> None:
    """Skip without atheris; under CI fail where the ``test`` extra installs it."""
    if importlib.util.find_spec("atheris") is not None:
        return
    reason = "atheris is not installed (pip install 'sockproto[fuzz]')"
    wheels = sys.platform == "linux" and platform.machine() == "x86_64" and sys.version_info < (3, 14)
    if os.environ.get("SOCKPROTO_REQUIRE_TOOLS") and wheels:
        pytest.fail(f"{reason}: the test extra installs it here")
    pytest.skip(reason)


def run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUN), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 150)
@pytest.mark.parametrize("target", ["decoder", "datagram"])
def test_fuzz_target_for_a_bounded_time(target: str, tmp_path: Path) -> None:
    require_atheris()
    args = ("--seconds", str(SECONDS), "--target", target, "--workdir", str(tmp_path))
    result = run(*args, timeout=SECONDS + 140)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, f"the {target} fuzz target failed:\n{result.stdout}\n{result.stderr}"
    assert f"ok: {target}:" in result.stdout


@pytest.mark.timeout(150)
def test_the_runner_finds_and_reports_a_failing_input(tmp_path: Path) -> None:
    require_atheris()
    result = run("--seconds", "60", "--target", "canary", "--workdir", str(tmp_path), timeout=140)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL: canary" in result.stdout
    assert "the canary input was found" in result.stdout
    [artifact] = (tmp_path / "artifacts-canary").iterdir()
    assert artifact.read_bytes().startswith(b"FUZ")
    assert f"--replay {artifact} --target canary" in result.stdout
    replay = run("--replay", str(artifact), "--target", "canary", timeout=60)
    assert replay.returncode != 0 and "the canary input was found" in replay.stderr


@pytest.mark.parametrize("target", ["decoder", "datagram"])
def test_targets_pass_on_their_seeds_without_atheris(target: str) -> None:
    for seed in targets.seeds(target):
        targets.TARGETS[target](seed)
        for cut in range(len(seed)):
            targets.TARGETS[target](seed[:cut])

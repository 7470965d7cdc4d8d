"""The twistd plugins as users run them: installed, from outside the source tree."""

from __future__ import annotations

import ast
import json
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from ..helpers import BIN, ROOT, free_port, run_twistd, socket_activated_twistd, twistd, wait_for_port

PLUGINS = ROOT / "twisted" / "plugins" / "sockproto_plugins.py"


def tapnames() -> list[str]:
    """Every tapname registered by the plugin module (read from its source)."""
    names = []
    for node in ast.walk(ast.parse(PLUGINS.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "ServiceMaker":
            names.append(ast.literal_eval(node.args[3]))
    return names


def frame_request(port: int, payload: bytes, host: str = "127.0.0.1", ident: int = 1) -> bytes:
    """One SPF/1 request over a plain socket; return the RESPONSE payload."""
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(struct.pack(">2sBBII", b"SP", 1, 1, ident, len(payload)) + payload)
        data = b""
        while len(data) < 12 or len(data) < 12 + struct.unpack(">I", data[8:12])[0]:
            chunk = s.recv(65536)
            assert chunk, f"connection closed after {data!r}"
            data += chunk
    assert data[:4] == b"SP\x01\x02", data
    return data[12:]


def stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return out.decode(errors="replace")


def test_installed_package_ships_the_plugin(tmp_path: Path) -> None:
    code = (
        "import importlib.metadata as m, json, sockproto\n"
        "files = [str(f) for f in m.files('sockproto')]\n"
        "print(json.dumps({'file': sockproto.__file__, 'files': files,\n"
        "  'direct_url': m.distribution('sockproto').read_text('direct_url.json')}))\n"
    )
    out = subprocess.run(
        [str(BIN / "python"), "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    info = json.loads(out.stdout)
    assert "site-packages" in info["file"], info["file"]  # not the source tree
    assert '"editable": true' not in (info["direct_url"] or "")
    files = info["files"]
    assert "twisted/plugins/sockproto_plugins.py" in files
    assert "sockproto/py.typed" in files
    assert not any("dropin.cache" in f or "_trial_temp" in f for f in files)
    assert "twisted/__init__.py" not in files and "twisted/plugins/__init__.py" not in files


def test_twistd_help_lists_every_plugin(tmp_path: Path) -> None:
    names = tapnames()
    assert {"sockproto", "sockproto-frame"} <= set(names)
    result = run_twistd("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.strip().startswith("sockproto")}
    assert set(names) <= listed, result.stdout


def test_frame_plugin_serves_stops_on_sigterm_and_restarts_on_same_port(tmp_path: Path) -> None:
    port = free_port()
    args = ["sockproto-frame", "--listen", f"tcp:{port}:interface=127.0.0.1", "--handler", "sha256"]
    proc = twistd(*args, cwd=tmp_path)
    try:
        wait_for_port(port)
        assert frame_request(port, b"abc").startswith(b"ba7816bf")
        # Leave a connection open: the server closes it at shutdown (so the server side
        # goes to TIME_WAIT, the talk's SO_REUSEADDR lesson).
        idle = socket.create_connection(("127.0.0.1", port), timeout=10)
        idle.sendall(struct.pack(">2sBBII", b"SP", 1, 4, 9, 0))  # a PING: the server has it
        assert idle.recv(12)[:4] == b"SP\x01\x05"
    finally:
        log = stop(proc)
    assert proc.returncode == -signal.SIGTERM, log  # ended by the signal: clean for systemd
    assert "listening on" in log and "stops listening" in log, log
    assert idle.recv(1) == b""  # closed by the server
    idle.close()
    proc = twistd(*args, cwd=tmp_path)
    try:
        wait_for_port(port)
        assert frame_request(port, b"").startswith(b"e3b0c442")
    finally:
        log = stop(proc)
    assert "Address already in use" not in log


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-payload", "huge"], "--max-payload"),
        (["--max-in-flight", "0"], "--max-in-flight"),
        (["--header", "int64"], "--header"),
        (["--handler", "nosuchmodule:thing"], "--handler"),
        (["--listen", "nosuch:1"], "--listen"),
    ],
)
def test_bad_options_exit_with_usage_naming_the_option(tmp_path: Path, args: list[str], needle: str) -> None:
    result = run_twistd("-n", "sockproto-frame", *args, cwd=tmp_path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert needle in output, output
    assert "Traceback" not in output, output


def test_port_in_use_fails_start(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = run_twistd(
            "--pidfile=", "-n", "sockproto-frame", "--listen", f"tcp:{port}:interface=127.0.0.1", cwd=tmp_path
        )
    assert result.returncode != 0
    assert "Address already in use" in result.stdout + result.stderr


def test_systemd_socket_activation(tmp_path: Path) -> None:
    """systemd hands over a listening socket as fd 3 (LISTEN_FDS, LISTEN_PID)."""
    proc, port = socket_activated_twistd(
        "sockproto-frame", "--listen", "systemd:domain=INET:index=0", cwd=tmp_path
    )
    try:
        assert frame_request(port, b"activated") == b"activated"
    finally:
        log = stop(proc)
    assert "systemd:domain=INET:index=0" in log, log


def test_combined_plugin_starts_every_service(tmp_path: Path) -> None:
    proc = twistd("sockproto", cwd=tmp_path)
    try:
        wait_for_port(8750)
        assert frame_request(8750, b"hello") == b"hello"
        wait_for_port(8752)
        with socket.create_connection(("127.0.0.1", 8752), timeout=10) as s:
            s.sendall(b"half")
            s.shutdown(socket.SHUT_WR)
            assert s.makefile("rb").read() == b"half"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(10)
            u.connect(("127.0.0.1", 8751))
            u.send(struct.pack(">2sBBII", b"SP", 1, 1, 7, 4) + b"udp!")
            assert u.recv(65536) == struct.pack(">2sBBII", b"SP", 1, 2, 7, 4) + b"udp!"
    finally:
        log = stop(proc)
    assert proc.returncode == -signal.SIGTERM, log
    assert "sockproto-frame listening on tcp:8750:interface=127.0.0.1" in log, log


def test_source_checkout_is_not_what_the_tests_import() -> None:
    """Sanity: the twistd under test is the venv's, next to this interpreter."""
    assert (BIN / "twistd").exists(), BIN
    assert Path(sys.executable).parent == BIN

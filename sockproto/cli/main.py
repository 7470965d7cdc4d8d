"""``sockproto``: the client command (also ``python -m sockproto``).

.. code-block:: text

   sockproto frame     ENDPOINT [--data TEXT | --file PATH] [--header H] [--timeout S] [--count N]
                       [--endpoint ENDPOINT]... [--connections N] [--keepalive S] [--proxy-v2 SRC:PORT]
   sockproto datagram  ENDPOINT [--data TEXT | --file PATH] [--header spf1|raw] [--retries N] ...
   sockproto halfclose ENDPOINT [--data TEXT | --file PATH] [--timeout S] [--count N] [--proxy-v2 SRC:PORT]
   sockproto ping      ENDPOINT [--data TEXT | --file PATH] [--timeout S] [--count N]
   sockproto bench     ENDPOINT [--service frame|datagram|halfclose] [--requests N]
                       [--concurrency C] [--size BYTES] [--json]
                       [--endpoint ENDPOINT]... [--connections N] [--keepalive S]

Exit status: 0 answered, 1 the server answered ERROR, 2 usage error, 3 no answer
(could not connect, reset, timed out).  Every failure is one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, BinaryIO, NoReturn, TextIO

from .. import __version__
from ..core.datagram import HEADER_SIZE, MAX_UDP_PAYLOAD
from ..core.header import PRESETS, HeaderSpec
from ..core.units import parse_duration, parse_size
from ..datagram.client import DEFAULT_RETRIES
from .bench import BenchResult, LoadGenerator, Progress, session_opener
from .commands import Call, Streams, run_datagram, run_frame, run_frame_stream, run_halfclose, run_ping
from .endpoints import client_endpoint, proxy_v2_header
from .errors import CommandError, Status, describe
from .halfclose_stream import open_source, run_halfclose_stream, streams_source

__all__ = ["UsageError", "build_parser", "main", "prepare", "read_payload"]

_MAX_STREAM_PAYLOAD = 1 << 30  # what --file or stdin may hold for a stream request: 1 GiB
_SERVICES = ("frame", "datagram", "halfclose")
_DATAGRAM_MODES = ("spf1", "raw")
Job = Callable[[Any], Awaitable[Status]]


class UsageError(ValueError):
    """Bad arguments; :func:`main` reports them in one line and exits with status 2.

    :ivar prog: the (sub)command the message is about: ``sockproto frame``...
    """

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises :class:`UsageError` instead of printing its usage."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


def _typed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap ``parse`` so that argparse shows its ValueError message."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return convert


def _retries(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"expected a whole number of at least 0, got {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _add_request_options(parser: argparse.ArgumentParser, *, stdin: bool = True) -> None:
    parser.add_argument("endpoint", metavar="ENDPOINT", help="HOST:PORT, [IPv6]:PORT, or an endpoint string")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", metavar="TEXT", help="the request payload, as text")
    source.add_argument("--file", metavar="PATH", help="read the request payload from PATH")
    if not stdin:
        parser.set_defaults(empty_payload=True)
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_typed(parse_duration),
        default=10.0,
        help="per request (default 10)",
    )
    parser.add_argument(
        "--count", metavar="N", type=_typed(_count), default=1, help="send the request N times"
    )


def _add_proxy_option(parser: argparse.ArgumentParser) -> None:
    """``--proxy-v2 SRC:PORT``: start each connection with a PROXY v2 header, as a load balancer."""
    parser.add_argument(
        "--proxy-v2",
        metavar="SRC:PORT",
        help="send a PROXY protocol v2 header naming SRC:PORT as the client first (for a proxy: listener)",
    )


def _add_pool_options(parser: argparse.ArgumentParser) -> None:
    """``--endpoint``, ``--connections``, ``--keepalive``: send through a frame pool."""
    parser.add_argument(
        "--endpoint",
        dest="endpoints",
        metavar="ENDPOINT",
        action="append",
        default=[],
        help="another server (repeatable): requests go through a pool over ENDPOINT and each --endpoint",
    )
    parser.add_argument(
        "--connections",
        metavar="N",
        type=_typed(_count),
        help="use a pool with N connections per endpoint (default 1; bench: C / endpoints)",
    )
    parser.add_argument(
        "--keepalive",
        metavar="SECONDS",
        type=_typed(parse_duration),
        default=30.0,
        help="pool: PING a connection idle for SECONDS (default 30)",
    )


def _pool_endpoints(args: argparse.Namespace, reactor: Any) -> list[str]:
    """ENDPOINT and each ``--endpoint``, without repeats, if a pool is asked for; else none."""
    if not args.endpoints and args.connections is None:
        return []
    texts = list(dict.fromkeys(t.strip() for t in [args.endpoint, *args.endpoints]))
    for text in texts:
        if client_endpoint(reactor, text, datagram=False, timeout=args.timeout).is_datagram:
            raise ValueError(f"--endpoint {text!r}: the frame pool takes stream endpoints, not udp:")
    return texts


def build_parser() -> argparse.ArgumentParser:
    """The ``sockproto`` argument parser; bad arguments raise :class:`UsageError`."""
    parser = _Parser(
        prog="sockproto",
        description="Send requests to sockproto servers, or load-test them.",
        epilog="Exit status: 0 answered, 1 the server answered ERROR, 2 usage error, "
        "3 no answer (could not connect, reset, timed out).",
    )
    parser.add_argument("--version", action="version", version=f"sockproto {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    stdin_note = "The payload is --data, --file, or else standard input; answers go to standard output."

    frame = commands.add_parser("frame", help="send REQUEST frames (TCP, UNIX, TLS)", description=stdin_note)
    _add_request_options(frame)
    _add_pool_options(frame)
    frame.add_argument(
        "--header", choices=list(PRESETS), default="spf1", help="the wire header (default spf1)"
    )
    _add_proxy_option(frame)

    datagram = commands.add_parser("datagram", help="send UDP datagram requests", description=stdin_note)
    _add_request_options(datagram)
    datagram.add_argument("--header", choices=_DATAGRAM_MODES, default="spf1", help="spf1 (default) or raw")
    datagram.add_argument(
        "--retries",
        metavar="N",
        type=_typed(_retries),
        default=DEFAULT_RETRIES,
        help="retransmissions at most",
    )

    halfclose = commands.add_parser(
        "halfclose",
        help="send one request per connection, ended by a half-close",
        description=stdin_note + " --file and standard input are streamed (sent as read, never held whole)"
        " unless --count is over 1; the answer is written as it arrives.",
    )
    _add_request_options(halfclose)
    _add_proxy_option(halfclose)

    ping = commands.add_parser(
        "ping",
        help="send PINGs (a udp: ENDPOINT pings the datagram service)",
        description="The PING payload is --data, --file, or empty; PONG payloads go to standard "
        "output and one line per PONG, with its round-trip time, to standard error.",
    )
    _add_request_options(ping, stdin=False)
    ping.add_argument(
        "--retries",
        metavar="N",
        type=_typed(_retries),
        default=DEFAULT_RETRIES,
        help="UDP retransmissions at most",
    )

    bench = commands.add_parser(
        "bench",
        help="load-test a server",
        description="Load-test a server: requests/s, MB/s and latency percentiles.",
    )
    bench.add_argument("endpoint", metavar="ENDPOINT", help="HOST:PORT, [IPv6]:PORT, or an endpoint string")
    bench.add_argument(
        "--service", choices=_SERVICES, default="frame", help="the server's service (default frame)"
    )
    bench.add_argument("--requests", metavar="N", type=_typed(_count), default=1000, help="requests in all")
    bench.add_argument(
        "--concurrency", metavar="C", type=_typed(_count), default=8, help="requests in flight"
    )
    bench.add_argument(
        "--size", metavar="BYTES", type=_typed(parse_size), default=100, help="payload size (100, 4KiB...)"
    )
    bench.add_argument("--header", help="frame: spf1 (default), int32...; datagram: spf1 (default) or raw")
    bench.add_argument("--timeout", metavar="SECONDS", type=_typed(parse_duration), default=10.0)
    bench.add_argument(
        "--retries", metavar="N", type=_typed(_retries), default=DEFAULT_RETRIES, help=argparse.SUPPRESS
    )
    bench.add_argument("--json", action="store_true", help="print the result as one line of JSON")
    _add_pool_options(bench)
    return parser


def read_payload(args: argparse.Namespace, stdin: BinaryIO, limit: int) -> bytes:
    """The request payload from --data, --file, or stdin (``ping``: empty by default)."""
    if args.data is not None:
        payload = os.fsencode(args.data)  # the bytes the shell passed, even if not UTF-8
    elif args.file is not None:
        try:
            with open(args.file, "rb") as f:
                payload = f.read(limit + 1)
        except OSError as e:
            raise ValueError(f"--file {args.file!r}: {e.strerror or e}") from None
    elif getattr(args, "empty_payload", False):
        payload = b""
    else:
        payload = stdin.read(limit + 1)
    if len(payload) > limit:
        raise ValueError(f"the payload is over the {limit}-byte limit of one request here")
    return payload


def open_frame_file(path: str, header: HeaderSpec | None) -> tuple[BinaryIO, int] | None:
    """``sockproto frame --file PATH``: the file, opened, and its size (the frame's length).

    ``None`` if it is not a regular file (a pipe: its size is not known before its first
    byte must be sent; it is read whole, as stdin is).

    :raises ValueError: if it cannot be opened, or is larger than the header can say.
    """
    try:
        source = open(path, "rb")  # noqa: SIM115  # closed by run_frame_stream
    except OSError as e:
        raise ValueError(f"--file {path!r}: {e.strerror or e}") from None
    info = os.fstat(source.fileno())
    if not stat.S_ISREG(info.st_mode):
        source.close()
        return None
    if header is not None and info.st_size > header.max_payload:
        source.close()
        limit = f"the {header.max_payload}-byte limit of {header.name}"
        raise ValueError(f"--file {path!r}: {info.st_size} bytes is over {limit}")
    return source, info.st_size


def prepare(args: argparse.Namespace, reactor: Any, stdin: BinaryIO, streams: Streams) -> Job:
    """Check everything and read the payload; return what the reactor will run.

    :raises ValueError: for a usage error (nothing has been sent).
    """
    command = args.command
    service = args.service if command == "bench" else command
    target = client_endpoint(reactor, args.endpoint, datagram=service == "datagram", timeout=args.timeout)
    if command == "ping":
        service = "datagram" if target.is_datagram else "frame"
    if target.is_datagram and service != "datagram":
        raise ValueError(
            f"{args.endpoint!r}: a udp: endpoint is for the datagram service "
            "('sockproto datagram', 'sockproto ping', 'sockproto bench --service datagram')"
        )
    if service == "datagram" and not target.is_datagram:
        raise ValueError(
            f"{args.endpoint!r}: the datagram service takes udp:host=HOST:port=PORT or HOST:PORT"
        )
    call = Call(target, b"", timeout=args.timeout, retries=getattr(args, "retries", DEFAULT_RETRIES))
    if hasattr(args, "endpoints"):  # frame, bench
        call.pool = _pool_endpoints(args, reactor)
        if call.pool and service != "frame":
            raise ValueError("--endpoint, --connections: only the frame service has a pool")
        call.keepalive = args.keepalive
        workers = min(args.concurrency, args.requests) if command == "bench" else 1
        call.connections = args.connections or max(1, -(-workers // max(1, len(call.pool))))
    header = getattr(args, "header", None)
    if service == "datagram":
        call.mode = header or "spf1"
        if call.mode not in _DATAGRAM_MODES:
            raise ValueError(f"--header: the datagram service takes spf1 or raw, not {header!r}")
        limit = MAX_UDP_PAYLOAD - (HEADER_SIZE if call.mode == "spf1" else 0)
    else:
        name = header or "spf1"
        if name not in PRESETS:
            raise ValueError(f"--header: expected one of {', '.join(PRESETS)}, got {name!r}")
        call.header = PRESETS[name] if service == "frame" else None
        limit = min(call.header.max_payload if call.header else _MAX_STREAM_PAYLOAD, _MAX_STREAM_PAYLOAD)
    if command == "bench":
        if service == "halfclose" and header is not None:
            raise ValueError("--header: the half-close service has no header")
        if args.size > limit:
            raise ValueError(f"--size: {args.size} bytes is over the {limit}-byte limit of one request here")
        where = ", ".join(call.pool) or target.text
        result = BenchResult(args.service, where, args.requests, args.concurrency, args.size)
        progress = Progress(streams.err, args.requests) if streams.err.isatty() else None
        payload = (bytes(range(251)) * (args.size // 251 + 1))[: args.size]

        async def bench(r: Any) -> Status:
            generator = LoadGenerator(
                r, session_opener(r, args.service, call), payload, result, progress=progress
            )
            done = await generator.run()
            streams.answer((done.json() if args.json else done.text()).encode())
            return done.status

        return bench
    if getattr(args, "proxy_v2", None) is not None:
        if call.pool:
            raise ValueError("--proxy-v2: not with --endpoint or --connections (one connection only)")
        call.proxy_header = proxy_v2_header(args.proxy_v2, args.endpoint)
    if streams_source(args):  # stdin or --file, sent as it is read (sockproto.cli.halfclose_stream)
        source = open_source(args, stdin)
        return lambda r: run_halfclose_stream(r, call, source, streams, close=source is not stdin)
    if command == "frame" and args.file is not None and args.count == 1 and not call.pool:
        opened = open_frame_file(args.file, call.header)
        if opened is not None:  # a regular file: sent as it is read
            source, length = opened
            return lambda r: run_frame_stream(r, call, source, length, streams)
    call.payload = read_payload(args, stdin, limit)
    call.count = args.count
    run = {"frame": run_frame, "datagram": run_datagram, "halfclose": run_halfclose, "ping": run_ping}[
        command
    ]
    return lambda r: run(r, call, streams)


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
    stderr: TextIO | None = None,
) -> NoReturn:
    """Run ``sockproto``; exit with its status (see :class:`~sockproto.cli.errors.Status`)."""
    from twisted.internet import reactor  # installed here, not when this module is imported
    from twisted.internet.task import react

    err = stderr if stderr is not None else sys.stderr
    streams = Streams(stdout if stdout is not None else sys.stdout.buffer, err)

    prog = "sockproto"
    try:
        args = build_parser().parse_args(argv)
        prog = f"sockproto {args.command}"
        job = prepare(args, reactor, stdin if stdin is not None else sys.stdin.buffer, streams)
    except ValueError as e:
        prog = e.prog if isinstance(e, UsageError) else prog
        err.write(f"{prog}: {' '.join(str(e).split())} (see {prog} --help)\n")
        raise SystemExit(Status.USAGE) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None

    state = {"finished": False, "interrupted": False}

    def interrupted() -> NoReturn:
        state["finished"] = True
        err.write(f"\n{prog}: interrupted\n")
        raise SystemExit(130)

    async def guarded(r: Any) -> None:
        def shutting_down() -> None:
            state["interrupted"] = not state["finished"]  # a signal stops the reactor first

        r.addSystemEventTrigger("before", "shutdown", shutting_down)
        try:
            status = await job(r)
        except Exception as e:
            if state["interrupted"]:  # the shutdown closed our connection: not the server's doing
                interrupted()
            error = e if isinstance(e, CommandError) else describe(e, args.endpoint)
            if error.message:
                err.write(f"{prog}: {error.message}\n")
            status = error.status
        state["finished"] = True
        raise SystemExit(int(status))

    try:
        react(guarded)
    except SystemExit:
        if not state["finished"]:  # stopped by a signal while still waiting
            interrupted()
        raise
    raise AssertionError("react() returned")  # pragma: no cover (react always exits)

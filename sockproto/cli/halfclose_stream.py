"""``sockproto halfclose`` streaming: the request from stdin or ``--file`` as read, the answer as it comes.

``sockproto halfclose HOST:PORT < big.iso`` never holds the file: it is sent chunk
by chunk with the connection's backpressure
(:func:`~sockproto.halfclose.sending.send_body`), and each chunk of the answer goes
to stdout as soon as it arrives.  With ``--count N`` over 1, or ``--data``, the
payload is read whole as before (it is sent N times).
"""

from __future__ import annotations

import argparse
from typing import Any, BinaryIO

from twisted.internet.interfaces import IStreamClientEndpoint

from ..halfclose.client import halfclose_request
from .commands import Call, Streams
from .errors import CommandError, Status, describe

__all__ = ["open_source", "run_halfclose_stream", "streams_source"]


def streams_source(args: argparse.Namespace) -> bool:
    """Whether this ``halfclose`` run streams its request from ``--file`` or stdin."""
    return args.command == "halfclose" and args.data is None and args.count == 1


def open_source(args: argparse.Namespace, stdin: BinaryIO) -> BinaryIO:
    """The file to stream: ``--file PATH`` opened, or stdin.

    :raises ValueError: if ``--file`` cannot be opened (a usage error: nothing sent).
    """
    if args.file is None:
        return stdin
    try:
        return open(args.file, "rb")  # closed by run_halfclose_stream
    except OSError as e:
        raise ValueError(f"--file {args.file!r}: {e.strerror or e}") from None


async def run_halfclose_stream(
    reactor: Any, call: Call, source: BinaryIO, streams: Streams, *, close: bool = False
) -> Status:
    """Send ``source`` to ``call.target`` as it is read; write the answer to stdout as it comes.

    ``call.timeout`` bounds the whole exchange, as for a buffered request: give a
    large one (``--timeout 600``) for a large upload.  ``close``: close ``source`` at the end.
    """
    endpoint = call.target.endpoint
    assert IStreamClientEndpoint.providedBy(endpoint)
    broken: list[CommandError] = []

    def on_data(chunk: bytes) -> None:
        if broken:
            return
        try:
            streams.answer(chunk)
        except CommandError as e:  # nobody reads stdout any more: stop the exchange
            broken.append(e)
            asked.cancel()

    asked = halfclose_request(
        endpoint, source, timeout=call.timeout, max_answer=None, reactor=reactor,
        proxy_header=call.proxy_header, on_data=on_data,
    )  # fmt: skip
    try:
        await asked
    except Exception as e:
        if broken:
            raise broken[0] from None
        raise describe(e, call.target.text) from None
    finally:
        if close:
            source.close()
    return Status.ANSWERED

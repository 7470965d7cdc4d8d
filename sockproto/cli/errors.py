"""Exit statuses of the client command, and the one-line message for each failure."""

from __future__ import annotations

from enum import IntEnum

from twisted.internet.defer import CancelledError
from twisted.internet.error import (
    ConnectError,
    ConnectingCancelledError,
    ConnectionClosed,
    ConnectionDone,
    DNSLookupError,
)
from twisted.python.failure import Failure

from ..frame.client import RemoteError
from ..serving.tls import tls_client_error

__all__ = ["CommandError", "Status", "describe"]


class Status(IntEnum):
    """The exit statuses of ``sockproto``."""

    ANSWERED = 0
    """Every request was answered."""
    SERVER_ERROR = 1
    """The server answered ERROR (its code and message are on stderr)."""
    USAGE = 2
    """Bad arguments: nothing was sent."""
    NO_ANSWER = 3
    """Could not connect, the connection was reset or closed, or the answer timed out."""
    OUTPUT_CLOSED = 141
    """Standard output was closed (a pipe's reader went away): stop quietly, as on SIGPIPE."""


class CommandError(Exception):
    """A failure the command reports in one line and ends with ``status``."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _one_line(text: str) -> str:
    return " ".join(text.split())


def describe(error: BaseException | Failure, where: str) -> CommandError:
    """Turn what failed a request to ``where`` into its exit status and one-line message.

    A :class:`~sockproto.frame.client.RemoteError` (the server answered ERROR) gives
    :attr:`Status.SERVER_ERROR`; everything else means there is no answer:
    :attr:`Status.NO_ANSWER`.
    """
    if isinstance(error, Failure):
        assert error.value is not None
        error = error.value
    if isinstance(error, CommandError):
        return error
    if isinstance(error, RemoteError):
        name = error.code.name if hasattr(error.code, "name") else "UNKNOWN"
        return CommandError(
            Status.SERVER_ERROR, _one_line(f"server error {int(error.code)} ({name}): {error.message}")
        )
    detail = _one_line(str(error)) or type(error).__name__
    if isinstance(error, (ConnectError, DNSLookupError)):  # refused, no such host, port unreachable
        message = f"could not connect to {where}: {detail}"
    elif isinstance(error, ConnectingCancelledError):
        message = f"could not connect to {where}: timed out"
    elif isinstance(error, (TimeoutError, CancelledError)):
        message = f"{where}: timed out: {detail}" if detail != "CancelledError" else f"{where}: timed out"
    elif isinstance(error, ConnectionDone):
        message = f"{where}: the connection was closed before the answer came"
    elif isinstance(error, ConnectionClosed):
        message = f"{where}: the connection was lost (reset?) before the answer came: {detail}"
    elif (tls := tls_client_error(error)) is not None:
        message = f"{where}: TLS handshake failed: {tls}"
    else:
        message = f"{where}: {type(error).__name__}: {detail}"
    return CommandError(Status.NO_ANSWER, _one_line(message))

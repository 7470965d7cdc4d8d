"""The frames a frame server answers with: a RESPONSE, or an ERROR by code; counted and logged.

:class:`FrameAnswers` is the base of :class:`~sockproto.frame.protocol.FrameServerProtocol`
that turns an outcome into frames.  Without an error channel (a header with no ``kind``
field) an error has no frame: it is *fatal*, and the connection closes once the answers
due before it are written.
"""

from __future__ import annotations

from typing import Final

from twisted.logger import LogLevel
from twisted.python.failure import Failure

from ..core.header import HeaderSpec
from ..core.spf1 import ErrorCode, Kind, encode_error
from ..handlers import Handler
from ..request import Request
from ..serving.answering import failure_message
from ..serving.stream import StreamServerProtocol

__all__ = ["FrameAnswers"]

_RESPONSE: Final = int(Kind.RESPONSE)
_ERROR: Final = int(Kind.ERROR)


class FrameAnswers(StreamServerProtocol):
    """Build answer frames for one connection; each returns ``(frames, fatal)``."""

    header: HeaderSpec
    handler: Handler

    def _framed(self, request: Request, data: bytes) -> tuple[list[bytes], bool]:
        """Frame one answer; one the header cannot carry becomes an ERROR 2 (or fatal)."""
        if len(data) <= self.header.max_payload:
            self.metrics.answers += 1
            return [self.header.pack_frame_header(_RESPONSE, request.id or 0, len(data)), data], False
        message = f"answer of {len(data)} bytes does not fit the {self.header.name} header"
        self._note("answer_too_large", LogLevel.error, "{message} (request from {peer})", message=message)
        return self._error(request.id, ErrorCode.TOO_LARGE, message)

    def _timed_out(self, request: Request, failure: Failure) -> tuple[list[bytes], bool]:
        """The handler overran the handler timeout: ERROR 6 (or fatal, without an error channel)."""
        message = failure.getErrorMessage()
        self._note("handler_timeout", LogLevel.warn, "request {id} from {peer}: {message}", id=request.id,
                   message=message)  # fmt: skip
        return self._error(request.id, ErrorCode.TIMEOUT, message)

    def _failed(self, request: Request, failure: Failure) -> tuple[list[bytes], bool]:
        """Log a handler failure; return its ERROR 4 frame (or fatal, without an error channel)."""
        self.limiter.failure(
            self._log, "handler_failed", "handler {handler!r} failed for {peer}", failure,
            handler=self.handler, peer=self.peer, service=self.kind,
        )  # fmt: skip
        return self._error(request.id, ErrorCode.HANDLER_FAILED, failure_message(failure))

    def _error(self, ident: int | None, code: ErrorCode, message: str) -> tuple[list[bytes], bool]:
        """Return an ERROR frame, or no frame and ``fatal`` when the header has no kind."""
        self.metrics.errors[code] += 1
        if not self.header.has_kind:
            return [], True
        payload = encode_error(code, message)
        return [self.header.pack_frame_header(_ERROR, ident or 0, len(payload)), payload], False

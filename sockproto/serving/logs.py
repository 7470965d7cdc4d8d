"""Rate-limited structured logging, so that a misbehaving peer cannot flood the log.

Every event a peer can cause (a connection opened, a malformed frame, a dropped
datagram, a handler failure...) goes through a :class:`LogLimiter`: per *category* (a
fixed string such as ``"protocol_error"``, never anything a peer chooses), at most
``burst`` events are logged per ``interval`` seconds; the others are only counted, and
the next event logged in that category after the window says how many were left out.

Events are :mod:`twisted.logger` events: besides the message, each carries the fields
given (``peer``, ``reason``...) and ``sockproto_event``, the category, so that a JSON log
observer (``twistd --logger``) can filter and count them.
"""

from __future__ import annotations

from typing import Any, Final, cast

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel

__all__ = ["DEFAULT_LOG_BURST", "DEFAULT_LOG_INTERVAL", "LogLimiter"]

DEFAULT_LOG_BURST: Final = 20
"""Events logged per category and window."""

DEFAULT_LOG_INTERVAL: Final = 10.0
"""Seconds of a window."""


class _Window:
    __slots__ = ("logged", "start", "suppressed")

    def __init__(self, start: float) -> None:
        self.start = start
        self.logged = 0
        self.suppressed = 0


class LogLimiter:
    """Log at most ``burst`` events per category every ``interval`` seconds.

    :param clock: gives the time (a :class:`~twisted.internet.task.Clock` in tests; the
        global reactor when ``None``).
    :param burst: events logged per category and window; ``0`` logs none (they are
        still counted).
    :param interval: the window, in seconds.

    :ivar suppressed: events left out so far, all categories together.
    """

    def __init__(
        self,
        clock: IReactorTime | None = None,
        *,
        burst: int = DEFAULT_LOG_BURST,
        interval: float = DEFAULT_LOG_INTERVAL,
    ) -> None:
        if burst < 0 or interval <= 0:
            raise ValueError("burst must be >= 0 and interval positive")
        self.clock = clock
        self.burst = burst
        self.interval = interval
        self.suppressed = 0
        self._windows: dict[str, _Window] = {}
        self._left_out: dict[str, int] = {}  # by category: not logged, not reported yet

    def emit(self, log: Logger, category: str, level: LogLevel, fmt: str, **fields: Any) -> bool:
        """Log ``fmt`` with ``fields`` at ``level`` unless ``category`` is over its rate.

        :param category: a fixed name for this kind of event (bounded: never derived
            from what a peer sends).
        :return: whether the event was logged.
        """
        if not self.admit(category):
            return False
        self.log(log, category, level, fmt, **fields)
        return True

    def failure(self, log: Logger, category: str, fmt: str, failure: Any, **fields: Any) -> bool:
        """Log ``failure`` with its traceback (level critical, as ``Logger.failure``), rate-limited."""
        if not self.admit(category):
            return False
        self._report_left_out(log, category, LogLevel.critical)
        log.failure(fmt, failure=failure, sockproto_event=category, **fields)
        return True

    def admit(self, category: str) -> bool:
        """Count one event of ``category``; whether it may be logged (then call :meth:`log`).

        Checking first lets a hot path skip building the event when it would be left out.
        """
        clock = self.clock
        if clock is None:
            from twisted.internet import reactor

            clock = self.clock = cast(IReactorTime, reactor)
        now = clock.seconds()
        window = self._windows.get(category)
        if window is None or now - window.start >= self.interval:
            if window is not None and window.suppressed:
                self._left_out[category] = self._left_out.get(category, 0) + window.suppressed
            window = self._windows[category] = _Window(now)
        if window.logged >= self.burst:
            window.suppressed += 1
            self.suppressed += 1
            return False
        window.logged += 1
        return True

    def log(self, log: Logger, category: str, level: LogLevel, fmt: str, **fields: Any) -> None:
        """Log an event :meth:`admit` let through (after saying how many were left out before it)."""
        self._report_left_out(log, category, level)
        log.emit(level, fmt, sockproto_event=category, **fields)

    def flush(self, log: Logger) -> None:
        """Report what every category left out so far (at shutdown), and start afresh."""
        for category, window in self._windows.items():
            if window.suppressed:
                self._left_out[category] = self._left_out.get(category, 0) + window.suppressed
        for category in list(self._left_out):
            self._report_left_out(log, category, LogLevel.info)
        self._windows.clear()

    def _report_left_out(self, log: Logger, category: str, level: LogLevel) -> None:
        left_out = self._left_out.pop(category, 0)
        if left_out:
            log.emit(
                level,
                "{suppressed} more {sockproto_event!r} event(s) were not logged "
                "(rate limit: {burst} per {interval:g} s)",
                sockproto_event=category,
                suppressed=left_out,
                interval=self.interval,
                burst=self.burst,
                sockproto_suppressed=True,
            )

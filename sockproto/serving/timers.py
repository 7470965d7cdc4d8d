"""Many connection timeouts behind one reactor timer.

A server that accepts thousands of connections a second and gives each a timeout
(:class:`~twisted.protocols.policies.TimeoutMixin`) would put a
:class:`~twisted.internet.base.DelayedCall` in the reactor per connection: an object
with a dozen attributes, a push on the reactor's heap (whose comparisons run in
Python), and on cancellation a tombstone the reactor sweeps now and then.  Almost none
of them ever fire: a connection that behaves cancels its timeout within milliseconds.

A :class:`TimerQueue` serves those timeouts for a whole service: each is a small
:class:`Timer` (an :class:`~twisted.internet.interfaces.IDelayedCall`, so
``TimeoutMixin`` uses it unchanged) in a heap of plain tuples, and the queue keeps a
single reactor call, at the earliest deadline.  The timeouts stay exact: each fires as
soon as the clock reaches its deadline, as a ``DelayedCall`` would (no coarse ticks).
With one timeout period per service the deadlines arrive in increasing order, so a
push costs one comparison; cancelling one costs a flag, and the cancelled entries are
dropped as they reach the top of the heap or, once they outnumber the live ones, all
at once.  When no timer is pending the reactor call is cancelled too, so an idle
service (or a finished test) leaves nothing in the reactor; a listening factory keeps
it between connections instead (:meth:`~TimerQueue.hold`).

A :class:`TimeoutSweep` goes further for a fixed deadline, such as the half-close
request timeout: it sets the timer only on the connections still waiting at its next
sweep, once a second, with the time left.  A connection done sooner costs no timer.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heapify, heappop, heappush
from itertools import count
from typing import Protocol, cast

from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

__all__ = ["DEFAULT_SWEEP_INTERVAL", "TimeoutSweep", "Timer", "TimerQueue"]

_PENDING = 0
_CALLED = 1
_CANCELLED = 2

_COMPACT_AT = 64  # dead heap entries tolerated before they may be swept all at once

_Entry = tuple[float, int, "Timer"]


@implementer(IDelayedCall)
class Timer:
    """One timeout of a :class:`TimerQueue`: call ``func`` at :meth:`getTime`.

    Made by :meth:`TimerQueue.call_later`; behaves as the ``DelayedCall`` that
    :meth:`~twisted.internet.interfaces.IReactorTime.callLater` returns.
    """

    __slots__ = ("_key", "_queue", "_state", "func", "time")

    # No __init__: TimerQueue.call_later fills the slots (it runs once per connection).
    _key: int  # the heap entry that stands for this timer; any other is stale
    _queue: TimerQueue
    _state: int
    func: Callable[[], object] | None
    time: float

    def getTime(self) -> float:
        """The time (in the queue's clock) at which ``func`` will be called."""
        return self.time

    def active(self) -> bool:
        """Whether the call is still to be made (neither made nor cancelled)."""
        return self._state == _PENDING

    def cancel(self) -> None:
        """Do not make the call.

        :raises AlreadyCancelled: it was cancelled already.
        :raises AlreadyCalled: it was made already.
        """
        if self._state != _PENDING:
            raise AlreadyCalled if self._state == _CALLED else AlreadyCancelled
        self._state = _CANCELLED
        self.func = None  # let the protocol go at once, not when its entry leaves the heap
        queue = self._queue
        live = queue._live = queue._live - 1
        heap = queue._heap
        if not live:
            queue._idle()
        elif heap[0][2] is self:  # the common case: the oldest timer went first
            heappop(heap)
            top = heap[0]
            if top[1] != top[2]._key or top[2]._state:
                queue._drop_dead_top()
        else:
            dead = queue._dead = queue._dead + 1
            if dead > _COMPACT_AT and dead > live:
                queue._compact()

    def reset(self, secondsFromNow: float) -> None:
        """Make the call ``secondsFromNow`` seconds from now instead.

        :raises AlreadyCancelled: it was cancelled already.
        :raises AlreadyCalled: it was made already.
        """
        if self._state != _PENDING:
            raise AlreadyCalled if self._state == _CALLED else AlreadyCancelled
        self._queue._move(self, self._queue._seconds() + secondsFromNow)

    def delay(self, secondsLater: float) -> None:
        """Make the call ``secondsLater`` seconds later than planned (earlier if negative).

        :raises AlreadyCancelled: it was cancelled already.
        :raises AlreadyCalled: it was made already.
        """
        if self._state != _PENDING:
            raise AlreadyCalled if self._state == _CALLED else AlreadyCancelled
        self._queue._move(self, self.time + secondsLater)

    def __repr__(self) -> str:
        state = ("pending", "called", "cancelled")[self._state]
        return f"<Timer {state} at {self.time:.3f}: {self.func!r}>"


def _is_dead(entry: _Entry) -> bool:
    """Whether a heap entry stands for no pending timer (cancelled, made, or moved sooner)."""
    timer = entry[2]
    return entry[1] != timer._key or timer._state != _PENDING


class TimerQueue:
    """Timers sharing one reactor call, at the earliest deadline.

    :param clock: the reactor (or a :class:`~twisted.internet.task.Clock`) that tells
        the time and makes the one call; the global reactor when ``None``.

    :ivar clock: that clock, once known.
    :ivar seconds: the clock's ``seconds``: the time now, for the queue's users (a
        protocol stamping a deadline reads it without a call through the queue).
    """

    _log = Logger()
    seconds: Callable[[], float]

    def __init__(self, clock: IReactorTime | None = None) -> None:
        self.clock = clock
        self._heap: list[_Entry] = []
        self._keys = count()
        self._live = 0  # pending timers
        self._dead = 0  # heap entries that stand for no pending timer
        self._call: IDelayedCall | None = None  # the reactor call, at self._call_time
        self._call_time = 0.0
        self._held = False

    def __len__(self) -> int:
        """How many timers are pending."""
        return self._live

    @property
    def clock(self) -> IReactorTime | None:
        """The clock telling the time and making the reactor call (``None``: the global reactor)."""
        return self._clock

    @clock.setter
    def clock(self, clock: IReactorTime | None) -> None:
        self._clock = clock
        self.seconds = clock.seconds if clock is not None else self._seconds

    def hold(self) -> None:
        """Keep the reactor call when no timer is pending, until :meth:`release`.

        A busy server goes through moments with no connection open; without this, each
        of them would cancel the reactor call and the next connection create another.
        Held, the call stays and, if it comes with nothing to do, does nothing.  A
        factory holds its queue while it listens.
        """
        self._held = True

    def release(self) -> None:
        """Stop holding: with no timer pending, the reactor call is cancelled now."""
        self._held = False
        if not self._live:
            self._idle()

    def call_later(self, delay: float, func: Callable[[], object]) -> Timer:
        """Call ``func()`` ``delay`` seconds from now, unless the timer is cancelled.

        ``func``'s exceptions are logged (as the reactor does for its own calls).
        """
        clock = self._clock
        if clock is None:
            clock = self._default_clock()
        when = clock.seconds() + delay
        timer = Timer()
        timer._queue = self
        timer.time = when
        timer.func = func
        timer._state = _PENDING
        key = timer._key = next(self._keys)
        heappush(self._heap, (when, key, timer))
        self._live += 1
        if self._call is None or when < self._call_time:
            self._schedule(when)
        return timer

    # -- for Timer --------------------------------------------------------------------

    def _default_clock(self) -> IReactorTime:
        from twisted.internet import reactor

        clock = self.clock = cast(IReactorTime, reactor)
        return clock

    def _seconds(self) -> float:
        clock = self._clock
        if clock is None:
            clock = self._default_clock()
        return clock.seconds()

    def _idle(self) -> None:
        """No timer is pending: forget the heap; cancel the reactor call unless held."""
        self._heap.clear()
        self._dead = 0
        if not self._held:
            call, self._call = self._call, None
            if call is not None:
                call.cancel()

    def _move(self, timer: Timer, when: float) -> None:
        """Give a pending timer a new deadline."""
        if when >= timer.time:  # later: its entry is corrected when it reaches the top
            timer.time = when
            return
        timer.time = when  # sooner: a new entry; the old one is dead
        key = timer._key = next(self._keys)
        heappush(self._heap, (when, key, timer))
        self._dead += 1
        if self._call is None or when < self._call_time:
            self._schedule(when)

    # -- the reactor call -------------------------------------------------------------

    def _schedule(self, when: float) -> None:
        """Have the reactor call :meth:`_run` at ``when`` (sooner than any call planned)."""
        clock = self._clock
        assert clock is not None  # _seconds() ran before
        delay = max(0.0, when - clock.seconds())
        call = self._call
        if call is None:
            self._call = clock.callLater(delay, self._run)
        else:
            call.reset(delay)
        self._call_time = when

    def _run(self) -> None:
        """Make every call due, then plan the reactor call for the next deadline."""
        self._call = None
        now = self._seconds()
        while self._heap and self._heap[0][0] <= now:  # self._heap: a call may compact it
            when, key, timer = heappop(self._heap)
            if key != timer._key or timer._state:
                self._dead -= 1
                continue
            if when < timer.time:  # reset to later: back in the heap at its new time
                heappush(self._heap, (timer.time, key, timer))
                continue
            func, timer.func = timer.func, None
            timer._state = _CALLED
            self._live -= 1
            try:
                func()  # type: ignore[misc]
            except Exception:
                self._log.failure("while running the timeout {func!r}", func=func)
        self._drop_dead_top()
        heap = self._heap
        if heap and (self._call is None or heap[0][0] < self._call_time):
            self._schedule(heap[0][0])

    def _drop_dead_top(self) -> None:
        """Pop the dead entries at the top of the heap, so that the top is a pending timer."""
        heap = self._heap
        while heap and _is_dead(heap[0]):
            heappop(heap)
            self._dead -= 1

    def _compact(self) -> None:
        """Drop every dead entry (amortised: they outnumber the live ones)."""
        heap = [
            (timer.time, key, timer)
            for _, key, timer in self._heap
            if key == timer._key and timer._state == _PENDING
        ]
        heapify(heap)
        self._heap = heap
        self._dead = 0


DEFAULT_SWEEP_INTERVAL = 1.0
"""Seconds between two sweeps of a :class:`TimeoutSweep`."""


class _Timeoutable(Protocol):
    def setTimeout(self, period: float | None) -> float | None: ...


class TimeoutSweep:
    """Give a connection its timeout only if it is still waiting at the next sweep.

    A half-close request completes within milliseconds of connecting, and a timer made
    and cancelled for each would be most of the cost of its timeout.  Instead
    :meth:`add` notes the deadline, and a sweep every ``interval`` seconds calls
    ``setTimeout`` (:class:`~twisted.protocols.policies.TimeoutMixin`'s) with the time
    left on each connection still waiting: the timeout fires at the same deadline as
    if it had been set when the connection was made, and most connections never cost
    a timer.  (A period under ``interval`` is set at once.)

    A protocol on its hot path may do what :meth:`add` and :meth:`discard` do itself,
    without the calls: put ``{connection: deadline}`` in :attr:`waiting` (a deadline of
    :attr:`TimerQueue.seconds` plus the period, for a period over :attr:`interval`),
    then call :meth:`start` if :attr:`running` is false; to discard, pop it and call
    :meth:`stop_if_idle` if :attr:`waiting` is left empty.

    :param queue: the timers of the service (the sweeps and the timeouts run on it).
    :param interval: seconds between two sweeps, while any connection is waiting.

    :ivar waiting: the connections whose timeout is still to be set, with their deadline.
    :ivar running: whether the next sweep is planned.
    """

    __slots__ = ("_timer", "interval", "queue", "running", "waiting")

    def __init__(self, queue: TimerQueue, interval: float = DEFAULT_SWEEP_INTERVAL) -> None:
        self.queue = queue
        self.interval = interval
        self.waiting: dict[_Timeoutable, float] = {}
        self.running = False
        self._timer: Timer | None = None

    def __len__(self) -> int:
        """How many connections wait for their timeout to be set."""
        return len(self.waiting)

    def add(self, connection: _Timeoutable, period: float) -> None:
        """Time ``connection`` out ``period`` seconds from now, unless :meth:`discard` comes first."""
        if period <= self.interval:
            connection.setTimeout(period)
            return
        self.waiting[connection] = self.queue.seconds() + period
        if not self.running:
            self.start()

    def discard(self, connection: _Timeoutable) -> None:
        """``connection`` no longer needs its timeout (nothing to do if it was set already)."""
        waiting = self.waiting
        if waiting.pop(connection, None) is not None and not waiting:
            self.stop_if_idle()

    def start(self) -> None:
        """Plan the next sweep (a connection waits now)."""
        self.running = True
        self._timer = self.queue.call_later(self.interval, self._sweep)

    def stop_if_idle(self) -> None:
        """Nothing waits: cancel the next sweep, unless the queue is held (a listening factory)."""
        if not self.waiting and not self.queue._held:
            self.release()

    def release(self) -> None:
        """With no connection waiting, cancel the next sweep now (the service stopped)."""
        if not self.waiting and self._timer is not None:
            timer, self._timer = self._timer, None
            self.running = False
            timer.cancel()

    def _sweep(self) -> None:
        self._timer = None
        self.running = False
        waiting, self.waiting = self.waiting, {}
        now = self.queue.seconds()
        for connection, deadline in waiting.items():
            connection.setTimeout(max(0.0, deadline - now))

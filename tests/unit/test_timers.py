"""TimerQueue: many timeouts on one reactor call, each as exact as a DelayedCall."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from sockproto.serving.timers import TimeoutSweep, Timer, TimerQueue


class QueueCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.queue = TimerQueue(self.clock)
        self.fired: list[str] = []

    def later(self, delay: float, name: str) -> Timer:
        return self.queue.call_later(delay, lambda: self.fired.append(name))


class FiringTests(QueueCase):
    def test_provides_idelayedcall(self) -> None:
        timer = self.later(1, "a")
        self.assertTrue(verifyObject(IDelayedCall, timer))
        self.assertEqual(timer.getTime(), 1)

    def test_fires_when_the_clock_reaches_the_deadline(self) -> None:
        timer = self.later(30, "a")
        self.clock.advance(30 - 0.1)
        self.assertEqual(self.fired, [])
        self.assertTrue(timer.active())
        self.clock.advance(0.1)
        self.assertEqual(self.fired, ["a"])
        self.assertFalse(timer.active())
        self.assertEqual(len(self.queue), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_many_timers_one_reactor_call(self) -> None:
        for i in range(100):
            self.later(10 + i, f"t{i}")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(len(self.queue), 100)
        self.clock.advance(10)
        self.assertEqual(self.fired, ["t0"])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.pump([1] * 99)
        self.assertEqual(self.fired, [f"t{i}" for i in range(100)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_deadlines_out_of_order(self) -> None:
        self.later(5, "five")
        self.later(1, "one")
        self.later(3, "three")
        self.later(3, "three again")
        self.clock.advance(1)
        self.assertEqual(self.fired, ["one"])
        self.clock.advance(10)
        self.assertEqual(self.fired, ["one", "three", "three again", "five"])

    def test_a_failing_call_is_logged_and_the_others_still_run(self) -> None:
        events: list[dict[str, Any]] = []
        self.patch(TimerQueue, "_log", Logger(observer=events.append))

        def boom() -> None:
            raise ZeroDivisionError()

        self.queue.call_later(1, boom)
        self.later(1, "after")
        self.clock.advance(1)
        self.assertEqual(self.fired, ["after"])
        [event] = events
        self.assertTrue(event["log_failure"].check(ZeroDivisionError))
        self.flushLoggedErrors(ZeroDivisionError)

    def test_a_call_may_schedule_and_cancel_timers(self) -> None:
        doomed = self.later(2, "doomed")

        def first() -> None:
            self.fired.append("first")
            doomed.cancel()
            self.later(0.5, "new")

        self.queue.call_later(1, first)
        self.clock.advance(1)
        self.assertEqual(self.fired, ["first"])
        self.clock.advance(0.5)
        self.assertEqual(self.fired, ["first", "new"])
        self.clock.advance(5)
        self.assertEqual(self.fired, ["first", "new"])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class CancelTests(QueueCase):
    def test_cancelled_timer_does_not_fire(self) -> None:
        timer = self.later(1, "a")
        timer.cancel()
        self.assertFalse(timer.active())
        self.assertIsNone(timer.func)  # what it would have called is released at once
        self.clock.advance(2)
        self.assertEqual(self.fired, [])

    def test_cancel_twice_or_after_the_call(self) -> None:
        timer = self.later(1, "a")
        timer.cancel()
        self.assertRaises(AlreadyCancelled, timer.cancel)
        self.assertRaises(AlreadyCancelled, timer.reset, 1)
        called = self.later(1, "b")
        self.clock.advance(1)
        self.assertRaises(AlreadyCalled, called.cancel)
        self.assertRaises(AlreadyCalled, called.delay, 1)

    def test_cancelling_the_last_timer_cancels_the_reactor_call(self) -> None:
        timers = [self.later(i + 1, "x") for i in range(5)]
        for timer in timers:
            self.assertEqual(len(self.clock.getDelayedCalls()), 1)
            timer.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.queue), 0)

    def test_cancelled_entries_do_not_pile_up(self) -> None:
        """Behind a timer that stays, the cancelled ones are swept: memory stays bounded."""
        self.later(100, "stays")
        for i in range(10_000):
            self.later(200, f"t{i}").cancel()
        self.assertLess(len(self.queue._heap), 200)
        self.assertEqual(len(self.queue), 1)
        self.clock.advance(100)
        self.assertEqual(self.fired, ["stays"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_oldest_first_cancellation_keeps_the_heap_small(self) -> None:
        live = [self.later(30, "x") for _ in range(8)]
        for _ in range(1000):
            live.append(self.later(30, "x"))
            live.pop(0).cancel()
        self.assertEqual(len(self.queue._heap), 8)


class ResetTests(QueueCase):
    def test_reset_later(self) -> None:
        timer = self.later(5, "a")
        self.clock.advance(4)
        timer.reset(5)  # now 9
        self.assertEqual(timer.getTime(), 9)
        self.clock.advance(4.9)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.fired, ["a"])

    def test_reset_sooner_moves_the_reactor_call(self) -> None:
        timer = self.later(10, "a")
        timer.reset(2)
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 2)
        self.clock.advance(2)
        self.assertEqual(self.fired, ["a"])
        self.clock.advance(10)
        self.assertEqual(self.fired, ["a"])  # the old deadline does not fire it again

    def test_delay(self) -> None:
        timer = self.later(5, "a")
        timer.delay(3)
        self.clock.advance(7.5)
        self.assertEqual(self.fired, [])
        timer.delay(-2)  # 6: due already
        self.clock.advance(0)
        self.assertEqual(self.fired, ["a"])


class HoldTests(QueueCase):
    def test_held_the_reactor_call_outlives_the_last_timer(self) -> None:
        self.queue.hold()
        self.later(5, "a").cancel()
        [call] = self.clock.getDelayedCalls()
        self.later(7, "b").cancel()  # no new reactor call
        self.assertEqual(self.clock.getDelayedCalls(), [call])
        self.clock.advance(5)  # it comes, finds nothing to do, and is not renewed
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.later(1, "c")
        self.clock.advance(1)
        self.assertEqual(self.fired, ["c"])

    def test_release_cancels_an_idle_call(self) -> None:
        self.queue.hold()
        self.later(5, "a").cancel()
        self.queue.release()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_release_leaves_pending_timers(self) -> None:
        self.queue.hold()
        self.later(5, "a")
        self.queue.release()
        self.clock.advance(5)
        self.assertEqual(self.fired, ["a"])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ClockTests(QueueCase):
    def test_seconds_is_the_clocks(self) -> None:
        self.clock.advance(7)
        self.assertEqual(self.queue.seconds(), 7)
        other = Clock()
        other.advance(3)
        self.queue.clock = other
        self.assertEqual(self.queue.seconds(), 3)
        self.assertIs(self.queue.clock, other)

    def test_without_a_clock_seconds_is_the_reactors(self) -> None:
        from twisted.internet import reactor

        queue = TimerQueue()
        self.assertIsNone(queue.clock)
        now = queue.seconds()
        self.assertIs(queue.clock, reactor)  # found on first use
        self.assertLessEqual(now, queue.seconds())


class Waiter(TimeoutMixin):
    """A connection with a TimeoutMixin, on a queue."""

    def __init__(self, queue: TimerQueue, fired: list[str], name: str) -> None:
        self.queue = queue
        self.fired = fired
        self.name = name

    def callLater(self, period: float, func: Any) -> Timer:
        return self.queue.call_later(period, func)

    def timeoutConnection(self) -> None:
        self.fired.append(self.name)


class SweepTests(QueueCase):
    def setUp(self) -> None:
        super().setUp()
        self.sweep = TimeoutSweep(self.queue, interval=1)

    def waiter(self, name: str, period: float) -> Waiter:
        w = Waiter(self.queue, self.fired, name)
        self.sweep.add(w, period)
        return w

    def test_timeout_set_at_the_sweep_with_the_time_left(self) -> None:
        self.clock.advance(0.25)
        w = self.waiter("w", 10)
        self.assertIsNone(w.timeOut)
        self.clock.advance(1)
        self.assertEqual(w.timeOut, 9)
        self.clock.advance(10 - 1 - 0.001)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.001)  # 10 s after add: the deadline, exactly
        self.assertEqual(self.fired, ["w"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_discarded_before_the_sweep_costs_no_timer(self) -> None:
        waiters = [self.waiter(f"w{i}", 10) for i in range(5)]
        self.assertEqual(len(self.queue), 1)  # the sweep, for all of them
        for w in waiters:
            self.sweep.discard(w)
        self.assertEqual(len(self.sweep), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(20)
        self.assertEqual(self.fired, [])

    def test_discard_after_the_sweep_leaves_it_to_set_timeout(self) -> None:
        w = self.waiter("w", 10)
        self.clock.advance(1)
        self.sweep.discard(w)  # not waiting any more: nothing to do
        self.clock.advance(9)
        self.assertEqual(self.fired, ["w"])

    def test_a_short_period_is_set_at_once(self) -> None:
        w = self.waiter("w", 0.5)
        self.assertEqual(w.timeOut, 0.5)
        self.assertEqual(len(self.sweep), 0)
        self.clock.advance(0.5)
        self.assertEqual(self.fired, ["w"])

    def test_a_sweep_past_the_deadline_times_out_at_once(self) -> None:
        self.sweep.interval = 5
        w = self.waiter("w", 5.5)
        self.clock.advance(7)  # the clock jumps: the sweep runs at 7, past the deadline
        self.assertEqual(self.fired, ["w"])
        self.assertEqual(w.timeOut, 0)

    def test_a_hot_path_may_do_add_and_discard_itself(self) -> None:
        """The contract a protocol inlines: an entry in ``waiting``, start(), stop_if_idle()."""
        self.clock.advance(2)
        w = Waiter(self.queue, self.fired, "w")
        self.sweep.waiting[w] = self.queue.seconds() + 10
        self.assertFalse(self.sweep.running)
        self.sweep.start()
        self.assertTrue(self.sweep.running)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        del self.sweep.waiting[w]
        self.sweep.stop_if_idle()
        self.assertFalse(self.sweep.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.sweep.waiting[w] = self.queue.seconds() + 10
        self.sweep.start()
        self.clock.advance(1)  # the sweep: the timer set with the time left, the sweep done
        self.assertEqual((w.timeOut, self.sweep.running, len(self.sweep)), (9, False, 0))
        self.clock.advance(9)
        self.assertEqual(self.fired, ["w"])

    def test_stop_if_idle_keeps_the_sweep_of_a_held_queue_or_of_waiting_connections(self) -> None:
        w = self.waiter("w", 10)
        self.sweep.stop_if_idle()  # w waits
        self.assertTrue(self.sweep.running)
        self.queue.hold()
        self.sweep.discard(w)
        self.assertTrue(self.sweep.running)  # held: the next connection reuses it
        self.queue.release()
        self.sweep.release()
        self.assertFalse(self.sweep.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_held_queue_keeps_the_sweep_release_drops_it(self) -> None:
        self.queue.hold()
        w = self.waiter("w", 10)
        self.sweep.discard(w)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.sweep.release()
        self.queue.release()
        self.assertEqual(self.clock.getDelayedCalls(), [])


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 20)),
        st.tuples(st.just("cancel"), st.integers(0, 50)),
        st.tuples(st.just("reset"), st.integers(0, 50), st.integers(0, 20)),
        st.tuples(st.just("advance"), st.integers(0, 10)),
    ),
    max_size=60,
)


class ModelTests(SynchronousTestCase):
    @given(OPS)
    def test_same_calls_at_the_same_times_as_delayed_calls(self, ops: list[tuple[Any, ...]]) -> None:
        """Any mix of timers, cancels, resets and time: the queue fires what the reactor would."""
        ours_clock, model_clock = Clock(), Clock()
        queue = TimerQueue(ours_clock)
        ours: list[tuple[float, int]] = []
        model: list[tuple[float, int]] = []
        pairs: list[tuple[IDelayedCall, IDelayedCall]] = []
        for op in ops:
            if op[0] == "add":
                n = len(pairs)
                pairs.append(
                    (
                        queue.call_later(op[1], lambda n=n: ours.append((ours_clock.seconds(), n))),
                        model_clock.callLater(op[1], lambda n=n: model.append((model_clock.seconds(), n))),
                    )
                )
            elif op[0] == "advance":
                ours_clock.advance(op[1])
                model_clock.advance(op[1])
            elif pairs:
                a, b = pairs[op[1] % len(pairs)]
                self.assertEqual(a.active(), b.active())
                if not b.active():
                    continue
                if op[0] == "cancel":
                    a.cancel()
                    b.cancel()
                else:
                    a.reset(op[2])
                    b.reset(op[2])
                    self.assertEqual(a.getTime(), b.getTime())
        ours_clock.advance(1000)
        model_clock.advance(1000)
        self.assertEqual(sorted(ours), sorted(model))
        self.assertEqual([t for t, _ in ours], sorted(t for t, _ in ours))  # in time order
        self.assertEqual(ours_clock.getDelayedCalls(), [])
        self.assertEqual(len(queue), 0)

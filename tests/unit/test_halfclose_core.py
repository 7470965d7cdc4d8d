"""The sans-IO half-close request and the half-close settings."""

from __future__ import annotations

from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core.halfclose import HalfCloseRequest, HalfCloseStateError, ResetReason, State
from sockproto.halfclose.settings import DEFAULT_HANDLER_TIMEOUT, HalfCloseSettings
from sockproto.handlers import echo
from sockproto.serving.logs import LogLimiter
from sockproto.serving.metrics import ServiceMetrics
from sockproto.tap import options

from .machines_halfclose import HalfCloseRequestMachine


class RequestTests(SynchronousTestCase):
    def test_receiving_complete_answered(self) -> None:
        req = HalfCloseRequest(10)
        self.assertTrue(req.idle)
        self.assertTrue(req.receive_data(b"abc"))
        self.assertFalse(req.idle)
        self.assertEqual(req.eof_received(), b"abc")
        self.assertIs(req.state, State.COMPLETE)
        self.assertEqual(req.answer(b"A"), b"A")
        self.assertIs(req.state, State.ANSWERED)
        self.assertTrue(req.finished)

    def test_one_read_is_not_copied(self) -> None:
        req = HalfCloseRequest(2000)
        data = b"x" * 1000
        req.receive_data(data)
        self.assertIs(req.eof_received(), data)

    def test_too_large_resets_and_drops_what_was_held(self) -> None:
        req = HalfCloseRequest(4)
        req.receive_data(b"1234")
        self.assertFalse(req.receive_data(b"5"))
        self.assertEqual((req.state, req.reason), (State.RESET, ResetReason.TOO_LARGE))
        self.assertEqual((req.held, req.received), (0, 5))
        self.assertTrue(req.receive_data(b"more"))  # ignored
        self.assertEqual(req.received, 5)
        self.assertRaises(HalfCloseStateError, req.eof_received)

    def test_later_answer_and_final_states(self) -> None:
        req = HalfCloseRequest(0)
        req.eof_received()
        req.answering()
        self.assertIs(req.state, State.ANSWERING)
        self.assertTrue(req.reset(ResetReason.HANDLER_TIMEOUT))
        self.assertFalse(req.reset(ResetReason.LOST))
        self.assertIs(req.reason, ResetReason.HANDLER_TIMEOUT)
        self.assertRaises(HalfCloseStateError, req.answer, b"late")

    def test_negative_limit_refused(self) -> None:
        self.assertRaises(ValueError, HalfCloseRequest, -1)

    def test_machine(self) -> None:
        run_state_machine_as_test(
            HalfCloseRequestMachine,
            settings=settings(max_examples=150, stateful_step_count=30, deadline=None),
        )


class SettingsTests(SynchronousTestCase):
    def make(self, **kw: object) -> HalfCloseSettings:
        metrics = ServiceMetrics("halfclose")
        return HalfCloseSettings(handler=echo, metrics=metrics, limiter=LogLimiter(), **kw)  # type: ignore[arg-type]

    def test_validated(self) -> None:
        self.assertRaises(ValueError, self.make, max_request=-1)
        self.assertRaises(ValueError, self.make, request_timeout=0)
        self.assertRaises(ValueError, self.make, handler_timeout=-1)
        self.assertEqual(self.make(max_request=0, request_timeout=None).max_request, 0)

    def test_default_handler_timeout_is_the_plugins(self) -> None:
        self.assertEqual(DEFAULT_HANDLER_TIMEOUT, options.DEFAULT_HANDLER_TIMEOUT)

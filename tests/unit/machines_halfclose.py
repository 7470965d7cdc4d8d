"""State machines over the half-close request (sans IO) and the half-close server, in memory.

:class:`HalfCloseRequestMachine` drives :class:`~sockproto.core.halfclose.HalfCloseRequest`
directly; :class:`HalfCloseServerMachine` the Twisted protocol over it, as follows.

The machine opens connections and, on each, sends request bytes in any number of
reads (sizes at and around ``max_request``), half-closes, resets, lets time pass and
completes the handlers in any order.  After every step it checks:

- an answer is written only after the half-close, exactly the handler's answer to the
  whole request, followed by a clean close (FIN), never a reset;
- a request over ``max_request`` is reset as soon as the limit is passed, a handler
  failure is reset, a request not complete ``request_timeout`` after connecting is
  reset, and a reset never comes with any answer byte;
- nothing is written after the connection is closed, every connection ends once its
  handler is done, and the factory tracks exactly the connections not lost yet;
- the bytes held per connection never exceed ``max_request``.
"""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from sockproto.core.halfclose import HalfCloseRequest, HalfCloseStateError, ResetReason, State
from sockproto.halfclose.server import HalfCloseServerFactory, HalfCloseServerProtocol
from sockproto.testing import HalfCloseTransport

from .machines_common import FAILING, LATER, Boom, ScriptedHandler, answer_for, payload_for, tags


class _Conn:
    """One connection and what must become of it."""

    def __init__(self, proto: HalfCloseServerProtocol, transport: HalfCloseTransport, opened: float) -> None:
        self.proto = proto
        self.transport = transport
        self.opened = opened
        self.request = b""
        self.tag = b""
        # "open", "running" (handler under way), "answered", "reset", "peer-reset"
        self.state = "open"
        self.answer = b""
        self.later: Deferred[bytes] | None = None


class HalfCloseServerMachine(RuleBasedStateMachine):
    """Real :class:`HalfCloseServerProtocol` connections against clients played by the machine."""

    def __init__(self) -> None:
        super().__init__()
        self.started = False

    @initialize(max_request=st.integers(0, 40), timeout=st.integers(1, 10), quiet=st.booleans())
    def start(self, max_request: int, timeout: int, quiet: bool) -> None:
        self.max_request = max_request
        self.timeout = timeout
        self.clock = Clock()
        self.handler = ScriptedHandler()
        self.factory = HalfCloseServerFactory(
            self.handler, max_request=max_request, request_timeout=timeout, clock=self.clock
        )
        self.factory.noisy = not quiet  # a quiet factory's connections take the inlined tracking path
        self.conns: list[_Conn] = []
        self.port = 40000
        self.started = True

    def pick(self, index: int, *states: str) -> _Conn | None:
        live = [c for c in self.conns if c.state in states and not c.transport.lost]
        return live[index % len(live)] if live else None

    @precondition(lambda self: self.started and len(self.conns) < 12)
    @rule()
    def connect(self) -> None:
        self.port += 1
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", self.port))
        transport = HalfCloseTransport(peer=IPv4Address("TCP", "127.0.0.1", self.port))
        transport.connect(proto)
        self.conns.append(_Conn(proto, transport, self.clock.seconds()))

    @precondition(lambda self: self.started)
    @rule(
        index=st.integers(0, 20),
        tag=tags,
        size=st.integers(0, 30),
        to_limit=st.sampled_from([None, -1, 0, 1]),
    )
    def send(self, index: int, tag: bytes, size: int, to_limit: int | None) -> None:
        """Bytes of the request; ``to_limit`` makes it end one below, at or one over the limit."""
        c = self.pick(index, "open")
        if c is None:
            return
        if to_limit is not None:
            size = max(0, self.max_request + to_limit - len(c.request))
        if not c.request:
            data = payload_for(tag, size)
            c.tag = data[:1]
        else:
            data = b"m" * size
        c.request += data
        c.proto.dataReceived(data)
        if len(c.request) > self.max_request:
            c.state = "reset"
            assert c.transport.aborted, (
                f"a {len(c.request)}-byte request (limit {self.max_request}) not reset"
            )

    @precondition(lambda self: self.started)
    @rule(index=st.integers(0, 20))
    def half_close(self, index: int) -> None:
        c = self.pick(index, "open")
        if c is None:
            return
        before = len(self.handler.later)
        c.transport.peer_half_close()
        if c.tag in FAILING and c.tag not in LATER:
            c.state = "reset"
        elif c.tag in LATER:
            assert len(self.handler.later) == before + 1
            c.later = self.handler.later.pop()[0]
            c.state = "running"
        else:
            c.state, c.answer = "answered", answer_for(c.request)

    @precondition(lambda self: self.started)
    @rule(index=st.integers(0, 20))
    def handler_done(self, index: int) -> None:
        c = self.pick(index, "running")
        if c is None or c.later is None:
            return
        if c.tag == b"D":
            c.later.callback(answer_for(c.request))
            c.state, c.answer = "answered", answer_for(c.request)
        else:
            c.later.errback(Boom("asked to fail later"))
            c.state = "reset"

    @precondition(lambda self: self.started)
    @rule(seconds=st.integers(0, 4))
    def time_passes(self, seconds: int) -> None:
        self.clock.advance(seconds)
        for c in self.conns:
            if c.state == "open" and not c.transport.lost and self.clock.seconds() >= c.opened + self.timeout:
                c.state = "reset"

    @precondition(lambda self: self.started)
    @rule(index=st.integers(0, 20))
    def peer_resets(self, index: int) -> None:
        c = self.pick(index, "open", "running", "answered", "reset")
        if c is None:
            return
        c.transport.peer_reset()
        if c.state in ("open", "running"):
            c.state = "peer-reset"

    @precondition(lambda self: self.started)
    @rule(index=st.integers(0, 20))
    def reactor_closes(self, index: int) -> None:
        """The reactor ends a connection the protocol closed or aborted: ``connectionLost``."""
        c = self.pick(index, "answered", "reset")
        if c is not None and c.transport.disconnecting:
            c.transport.lose()

    @invariant()
    def connections_are_right(self) -> None:
        if not self.started:
            return
        for c in self.conns:
            t = c.transport
            assert t.late_writes == b"", f"wrote {t.late_writes!r} after closing"
            assert c.proto.exchange.held <= self.max_request  # white box: the bytes held are the point
            if c.state in ("open", "running"):
                assert t.value() == b"" and not t.disconnecting, (c.state, t.value(), t.aborted)
            elif c.state == "answered":
                assert t.value() == c.answer, (t.value(), c.answer)
                assert t.closed_cleanly, "an answer must end with a clean close, not a reset"
            elif c.state == "reset":
                assert t.aborted, f"not reset: {c.request!r} (tag {c.tag!r})"
                assert t.value() == b"", f"a reset came with answer bytes {t.value()!r}"
            else:
                assert t.lost and t.value() == b""
        live = {c.proto for c in self.conns if not c.transport.lost}
        assert self.factory.connections == live, (len(self.factory.connections), len(live))
        metrics = self.factory.metrics
        assert (metrics.connections_open, metrics.connections_total) == (len(live), len(self.conns))
        waiting = {c.proto for c in self.conns if c.state == "open" and not c.transport.lost}
        assert set(self.factory.sweep.waiting) <= waiting  # white box: none left behind

    def teardown(self) -> None:
        if not self.started:
            return
        while self.pick(0, "running") is not None:
            self.handler_done(0)
        self.time_passes(self.timeout)
        self.connections_are_right()
        for c in self.conns:
            if not c.transport.lost:
                assert c.transport.disconnecting, f"connection left open in state {c.state}"
                c.transport.lose()
        assert not self.factory.connections


class HalfCloseRequestMachine(RuleBasedStateMachine):
    """The sans-IO :class:`~sockproto.core.halfclose.HalfCloseRequest` alone, against a model.

    Reads of any size, the end of file, a synchronous or later answer and resets for
    any reason, in any order; after every step the one state is the model's, the bytes
    held never pass ``max_request``, and a final state never changes again.
    """

    def __init__(self) -> None:
        super().__init__()
        self.req: HalfCloseRequest | None = None

    @initialize(max_request=st.integers(0, 40))
    def start(self, max_request: int) -> None:
        self.req = HalfCloseRequest(max_request)
        self.max_request = max_request
        self.model = State.RECEIVING
        self.sent = b""
        self.payload: bytes | None = None

    @precondition(lambda self: self.req is not None)
    @rule(data=st.binary(max_size=30))
    def receive(self, data: bytes) -> None:
        assert self.req is not None
        ok = self.req.receive_data(data)
        if self.model is State.RECEIVING:
            self.sent += data
            if len(self.sent) > self.max_request:
                self.model = State.RESET
                assert not ok and self.req.reason is ResetReason.TOO_LARGE
            else:
                assert ok
        else:
            assert ok  # ignored outside RECEIVING

    @precondition(lambda self: self.req is not None)
    @rule()
    def eof(self) -> None:
        assert self.req is not None
        if self.model is State.RECEIVING:
            self.payload = self.req.eof_received()
            assert self.payload == self.sent
            self.model = State.COMPLETE
        else:
            with pytest.raises(HalfCloseStateError):
                self.req.eof_received()

    @precondition(lambda self: self.req is not None)
    @rule()
    def answers_later(self) -> None:
        assert self.req is not None
        if self.model is State.COMPLETE:
            self.req.answering()
            self.model = State.ANSWERING
        else:
            with pytest.raises(HalfCloseStateError):
                self.req.answering()

    @precondition(lambda self: self.req is not None)
    @rule(answer=st.binary(max_size=10))
    def answer(self, answer: bytes) -> None:
        assert self.req is not None
        if self.model in (State.COMPLETE, State.ANSWERING):
            assert self.req.answer(answer) is answer
            self.model = State.ANSWERED
        else:
            with pytest.raises(HalfCloseStateError):
                self.req.answer(answer)

    @precondition(lambda self: self.req is not None)
    @rule(reason=st.sampled_from(ResetReason))
    def reset(self, reason: ResetReason) -> None:
        assert self.req is not None
        changed = self.req.reset(reason)
        final = self.model in (State.ANSWERED, State.RESET)
        assert changed is not final
        if not final:
            self.model = State.RESET
            assert self.req.reason is reason

    @invariant()
    def matches_the_model(self) -> None:
        if self.req is None:
            return
        assert self.req.state is self.model
        assert self.req.held <= self.max_request
        assert self.req.finished is (self.model in (State.ANSWERED, State.RESET))
        assert self.req.idle is (self.model is State.RECEIVING and self.req.received == 0)
        if self.model is not State.RESET:
            assert self.req.reason is None
        if self.model is not State.RECEIVING:
            assert self.req.held == 0

"""A state machine over the sans-IO frame connection with a streaming handler (issue 16).

The machine plays the client and the handlers at once: it queues request frames (up to
a few KiB) and PINGs, sends the stream in reads of any size (only while the connection
wants to read, as a transport would), lets handlers take body chunks, answer or fail
at any moment (also before their frame has arrived), and drains.  After every step:

- the bytes the connection holds for bodies stay within its high-water mark plus one
  read, and reading is paused whenever the mark is passed;
- each handler's chunks, joined, are a prefix of its request's payload (in order, none
  lost or repeated), and the whole payload once its frame is complete;
- no answer or error leaves before its request's frame was read to its last byte;
- ``in_flight`` never exceeds ``max_in_flight``, and each request is answered once;
- a sized answer (its payload given in pieces once its header is out) is never
  interleaved with other frames: everything decodes to the expected answers.

The teardown sends the rest, takes every chunk and answers everything: it must end
with every request answered (no deadlock between the in-flight limit, the body bound
and the reads).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sockproto.core import SPF1, Frame, FrameDecoder, Kind
from sockproto.core.frame_connection import FrameServerConnection
from sockproto.core.frame_stream import BodyHold, FrameBody
from sockproto.core.spf1 import ErrorCode
from sockproto.serving.metrics import ServiceMetrics
from sockproto.testing import build_frame

REQ, RESP, ERR, PING, PONG = (int(k) for k in Kind)
HIGH, LOW, MAX_READ = 600, 150, 400


class FrameStreamMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.started = False

    @initialize(max_in_flight=st.integers(1, 3))
    def start(self, max_in_flight: int) -> None:
        self.metrics = ServiceMetrics("frame")
        self.conn: FrameServerConnection[Any] = FrameServerConnection(
            SPF1,
            max_payload=1 << 20,
            max_in_flight=max_in_flight,
            counters=self.metrics,
            streamed=self.started_request,
            hold=BodyHold(HIGH, LOW),
        )
        self.decoder: FrameDecoder[Frame] = FrameDecoder(SPF1)
        self.wire = b""  # queued by the client, not sent yet
        self.sent = 0  # bytes of the client's stream sent so far
        self.ends: dict[int, int] = {}  # id -> offset in the stream where its frame ends
        self.payloads: dict[int, bytes] = {}  # id -> the request's payload
        self.pings: dict[int, bytes] = {}
        self.bodies: dict[int, tuple[Any, FrameBody, list[bytes]]] = {}  # started, unanswered
        self.answered: set[int] = set()
        self.expected: dict[int, tuple[int, bytes]] = {}  # id -> (kind, payload) due
        self.next_id = 1
        self.queued = 0  # offset of the end of what was queued
        self.cut: set[int] = set()  # requests whose frame the client never finished
        self.sized: dict[int, tuple[Any, bytes]] = {}  # sized answers: request, payload still to give
        self.eof = False
        self.started = True

    def started_request(self, request: Any, body: FrameBody) -> None:
        assert request.id not in self.bodies and request.id not in self.answered
        self.bodies[request.id] = (request, body, [])

    # -- the client -------------------------------------------------------------------

    def queue(self, data: bytes, ident: int) -> None:
        self.wire += data
        self.queued += len(data)
        self.ends[ident] = self.queued

    @precondition(lambda self: self.started and not self.eof)
    @rule(size=st.one_of(st.integers(0, 40), st.integers(0, 3000)), byte=st.integers(0, 255))
    def queue_request(self, size: int, byte: int) -> None:
        ident = self.next_id
        self.next_id += 1
        payload = bytes((byte + i) % 256 for i in range(size))
        self.payloads[ident] = payload
        self.queue(build_frame(payload, kind=REQ, id=ident), ident)

    @precondition(lambda self: self.started and not self.eof)
    @rule(payload=st.binary(max_size=20))
    def queue_ping(self, payload: bytes) -> None:
        ident = self.next_id
        self.next_id += 1
        self.pings[ident] = payload
        self.expected[ident] = (PONG, payload)
        self.queue(build_frame(payload, kind=PING, id=ident), ident)

    # the rules that end an example's traffic wait until some answers went out
    @precondition(lambda self: self.started and not self.eof and len(self.answered) >= 2)
    @rule()
    def client_half_closes(self) -> None:
        """The client shuts down its write side, maybe mid-frame: what it never finished is cut."""
        self.eof = True
        self.wire = b""
        unfinished = {i for i, end in self.ends.items() if end > self.sent}
        self.cut |= unfinished
        for ident in unfinished:
            self.expected.pop(ident, None)  # an answer given early is dropped with its frame
        self.conn.eof_received()
        for ident in unfinished & set(self.bodies):
            assert self.bodies[ident][1].truncated

    @precondition(lambda self: self.started and bool(self.wire) and self.conn.wants_read)
    @rule(size=st.integers(1, MAX_READ))
    def send(self, size: int) -> None:
        data, self.wire = self.wire[:size], self.wire[size:]
        self.sent += len(data)
        self.conn.serve(data, self.no_whole_requests, self.no_whole_requests)

    @staticmethod
    def no_whole_requests(*args: Any) -> None:
        raise AssertionError(f"a request was given whole to a streaming connection: {args}")

    @precondition(lambda self: self.started and len(self.answered) >= 2)
    @rule()
    def drain(self) -> None:
        """Shut down gracefully: the frame under way is completed, then nothing more is read."""
        self.conn.start_drain()

    # -- the handlers -----------------------------------------------------------------

    @precondition(lambda self: self.started and bool(self.bodies))
    @rule(index=st.integers(0, 10), count=st.integers(1, 5))
    def take(self, index: int, count: int) -> None:
        _, body, got = list(self.bodies.values())[index % len(self.bodies)]
        for _ in range(count):
            chunk = body.take()
            if chunk is None:
                break
            got.append(chunk)
        body.resume_wanted()
        self.conn.serve_backlog(self.no_whole_requests, self.no_whole_requests)

    @precondition(lambda self: self.started and bool(self.bodies))
    @rule(index=st.integers(0, 10), fail=st.booleans())
    def answer(self, index: int, fail: bool) -> None:
        ident = list(self.bodies)[index % len(self.bodies)]
        request, _, got = self.bodies.pop(ident)
        self.answered.add(ident)
        if fail:
            self.conn.fail(request, ErrorCode.HANDLER_FAILED, "no")
            expected = (ERR, b"")
        else:
            answer = b"%d" % len(b"".join(got))
            self.conn.answer(request, answer)
            expected = (RESP, answer)
        if ident not in self.cut:
            self.expected[ident] = expected
        self.conn.serve_backlog(self.no_whole_requests, self.no_whole_requests)

    @precondition(lambda self: self.started and bool(self.bodies))
    @rule(index=st.integers(0, 10), size=st.integers(0, 700))
    def answer_sized(self, index: int, size: int) -> None:
        """Answer with a length now and the payload later, in pieces."""
        ident = list(self.bodies)[index % len(self.bodies)]
        request, _, _ = self.bodies.pop(ident)
        self.answered.add(ident)
        payload = bytes(range(256)) * (size // 256 + 1)
        payload = payload[:size]
        self.conn.answer_sized(request, size)
        self.sized[ident] = (request, payload)
        if ident not in self.cut:
            self.expected[ident] = (RESP, payload)
        self.conn.serve_backlog(self.no_whole_requests, self.no_whole_requests)

    @precondition(lambda self: self.started and self.conn.sending is not None)
    @rule(size=st.integers(0, 300))
    def give(self, size: int) -> None:
        """Give the sized answer going out some of its payload (ending it when all is given)."""
        request = self.conn.sending
        ident = request.id
        _, rest = self.sized[ident]
        assert self.conn.answer_data(request, rest[:size])
        rest = rest[size:]
        self.sized[ident] = (request, rest)
        if not rest:
            assert self.conn.answer_end(request)
            del self.sized[ident]
            self.conn.serve_backlog(self.no_whole_requests, self.no_whole_requests)

    # -- the rules --------------------------------------------------------------------

    @invariant()
    def rules_hold(self) -> None:
        if not self.started:
            return
        conn = self.conn
        hold = conn.hold
        assert hold is not None
        assert hold.held <= HIGH + MAX_READ, hold.held
        if hold.paused:
            assert not conn.wants_read
        assert conn.in_flight <= conn.max_in_flight
        for ident, (_, body, got) in self.bodies.items():
            joined = b"".join(got)
            assert self.payloads[ident].startswith(joined), ident
            if body.ended:
                assert joined == self.payloads[ident]
        for event in self.decoder.feed(conn.data_to_send()):
            assert isinstance(event, Frame), event
            assert event.id is not None
            assert self.sent >= self.ends[event.id], "an answer left before its frame was read"
            kind, payload = self.expected.pop(event.id)
            assert event.kind == kind, (event, kind)
            if kind != ERR:
                assert event.payload == payload

    def never_sent(self) -> None:
        """Forget the frames the connection will not read (after a drain)."""
        self.wire = b""
        for ident, end in self.ends.items():
            if end > self.sent:
                self.expected.pop(ident, None)

    def teardown(self) -> None:
        if not self.started:
            return
        for _ in range(10_000):
            conn = self.conn
            if self.wire and conn.state.name != "OPEN" and conn.between_frames and not conn.wants_read:
                self.never_sent()  # drained or closing: the rest is never read
            if self.wire and self.conn.wants_read:
                self.send(MAX_READ)
            elif self.conn.sending is not None:
                self.give(10_000)
            elif self.bodies:
                for ident in list(self.bodies):
                    _, body, got = self.bodies[ident]
                    while (chunk := body.take()) is not None:
                        got.append(chunk)
                    if body.ended or body.finished:
                        self.answer(list(self.bodies).index(ident), False)
                    else:
                        self.conn.serve_backlog(self.no_whole_requests, self.no_whole_requests)
            else:
                break
            self.rules_hold()
        self.rules_hold()
        assert not self.wire, "the connection stopped reading for good"
        assert not self.bodies and not self.expected, (self.bodies, self.expected)

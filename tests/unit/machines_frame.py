"""State machines over the frame server and client (issue 2's rules), in memory.

The server machine plays a raw client: it writes any mix of requests, pings, frames of
the wrong kind, oversized frames and broken headers, pauses and resumes reading the
answers, and fires the handlers' Deferreds in any order, while the connection
delivers everything in small reads.  After every step it checks the rules:

- every request, ping, wrong-kind or oversized frame is answered exactly once, with
  its id and the documented answer (RESPONSE, PONG, ERROR 2, 3 or 4);
- without ids (``INT32``, ``INT16``) answers come in request order, and a failed
  handler or an oversized frame closes the connection after the answers due before it;
- a broken header gets ERROR 1 with id 0, after the answers due before it, then the
  connection closes and nothing more is sent;
- a client that half-closes after its last request gets every answer due, then the
  server closes;
- ``in_flight`` never exceeds ``max_in_flight``, and the bytes the server holds (the
  decoder's, the backlog's, the unsent answers) stay within bounds set by the limits.

The client machine is in :mod:`machines_frame_client`.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sockproto.core import INT16, INT32, SPF1, ErrorCode, Frame, FrameDecoder, HeaderSpec, Kind, decode_error
from sockproto.core.frame_connection import FrameServerConnection, PeerFrame
from sockproto.frame.server import FrameServerFactory, FrameServerProtocol
from sockproto.serving.metrics import ServiceMetrics
from sockproto.testing import build_frame, connect_protocols

from .machines_common import FAILING, LATER, Peer, ScriptedHandler, answer_for, payload_for, tags

REQ, RESP, ERR, PING, PONG = (int(k) for k in Kind)
ERROR_SLACK = 64  # an ERROR payload's bytes, at most, in these tests (the messages are short)


class FrameServerMachine(RuleBasedStateMachine):
    """A real :class:`FrameServerProtocol` against a raw client played by the machine."""

    server: FrameServerProtocol

    def __init__(self) -> None:
        super().__init__()
        self.started = False

    @initialize(
        header=st.sampled_from([SPF1, INT32, INT16]),
        max_payload=st.integers(0, 40),
        max_in_flight=st.integers(1, 4),
        write_buffer=st.integers(1, 120),
        chunk=st.integers(1, 48),
    )
    def start(
        self, header: HeaderSpec, max_payload: int, max_in_flight: int, write_buffer: int, chunk: int
    ) -> None:
        self.header = header
        self.max_payload = max_payload
        self.max_in_flight = max_in_flight
        self.write_buffer = write_buffer
        self.chunk = chunk
        self.handler = ScriptedHandler()
        factory = FrameServerFactory(
            self.handler, header=header, max_payload=max_payload, max_in_flight=max_in_flight
        )
        self.server = factory.buildProtocol(None)
        self.peer = Peer()
        self.connection = connect_protocols(
            self.server, self.peer, write_buffer=write_buffer, chunk_size=chunk
        )
        self.decoder: FrameDecoder[Frame] = FrameDecoder(header, max_payload=header.max_payload)
        self.seen = 0
        self.next_id = 1
        # id -> (answer kind, payload or error code, whether a Deferred of the machine's makes it)
        self.waiting: dict[int, tuple[str, Any, bool]] = {}
        self.in_order: deque[tuple[str, Any]] = deque()  # headers without ids: what comes next
        self.ending: str | None = None  # "malformed" or "fatal": the server is to close
        self.client_gone = False
        self.half_closed = False
        self.due_before_error: set[int] = set()
        self.error_seen = False
        self.started = True

    # -- what the client does ---------------------------------------------------------

    @property
    def writable(self) -> bool:
        return self.started and not self.client_gone and not self.half_closed

    def send(self, data: bytes) -> None:
        self.connection.client_transport.write(data)

    def frame(self, payload: bytes, kind: int) -> tuple[int, bytes]:
        ident = self.next_id
        self.next_id += 1
        return ident, build_frame(payload, kind=kind, id=ident, header=self.header)

    def expect(self, ident: int, what: str, value: Any, later: bool = False) -> None:
        """Record the answer owed to frame ``ident``; a dead connection owes nothing."""
        if self.ending is not None or self.client_gone:
            return
        if self.header.has_id:
            self.waiting[ident] = (what, value, later)
        else:
            self.in_order.append((what, value))
            if what == "fatal":
                self.ending = "fatal"

    @precondition(lambda self: self.writable)
    @rule(tag=tags, size=st.integers(0, 48), at_limit=st.booleans())
    def request(self, tag: bytes, size: int, at_limit: bool) -> None:
        length = max(0, self.max_payload - size % 3) if at_limit else min(size, self.max_payload)
        payload = payload_for(tag, length)
        ident, data = self.frame(payload, REQ)
        self.send(data)
        later = payload[:1] in LATER
        if payload[:1] in FAILING:
            if self.header.has_kind:
                self.expect(ident, "error", ErrorCode.HANDLER_FAILED, later)
            else:
                self.expect(ident, "fatal", None)
        else:
            self.expect(ident, "response", answer_for(payload), later)

    @precondition(lambda self: self.writable)
    @rule(count=st.integers(2, 20), tag=st.sampled_from([b"S", b"D"]))
    def burst(self, count: int, tag: bytes) -> None:
        """Many requests in one write, as a pipelining client sends them."""
        for _ in range(count):
            self.request(tag, self.max_payload, False)

    @precondition(lambda self: self.writable and self.header.has_kind)
    @rule(size=st.integers(0, 40))
    def ping(self, size: int) -> None:
        payload = bytes(range(min(size, self.max_payload)))
        ident, data = self.frame(payload, PING)
        self.send(data)
        self.expect(ident, "pong", payload)

    @precondition(lambda self: self.writable and self.header.has_kind)
    @rule(kind=st.sampled_from([RESP, ERR, PONG, 0, 6, 77, 255]), size=st.integers(0, 40))
    def wrong_kind(self, kind: int, size: int) -> None:
        ident, data = self.frame(b"w" * min(size, self.max_payload), kind)
        self.send(data)
        self.expect(ident, "error", ErrorCode.UNEXPECTED_KIND)

    @precondition(lambda self: self.writable)
    @rule(kind=st.sampled_from([REQ, PING, RESP, 9]), extra=st.integers(1, 30))
    def oversized(self, kind: int, extra: int) -> None:
        ident, data = self.frame(b"o" * (self.max_payload + extra), kind)
        self.send(data)
        if self.header.has_kind:
            self.expect(ident, "error", ErrorCode.TOO_LARGE)
        else:
            self.expect(ident, "fatal", None)

    @precondition(lambda self: self.writable and self.header.has_kind)
    @rule(offset=st.sampled_from([0, 1, 2]), cut=st.integers(0, 12))
    def broken_header(self, offset: int, cut: int) -> None:
        """A wrong magic (byte 0 or 1) or version (byte 2), sent whole or cut after the bad byte."""
        _, data = self.frame(b"", REQ)
        bad = bytearray(data)
        bad[offset] ^= 0x40
        self.send(bytes(bad[: max(cut, offset + 1)]))
        if self.ending is None:
            self.ending = "malformed"
            self.due_before_error = {i for i, (_, _, later) in self.waiting.items() if not later}

    @precondition(lambda self: self.started)
    @rule(index=st.integers(0, 10))
    def fire(self, index: int) -> None:
        self.handler.fire(index)

    @precondition(lambda self: self.started)
    @rule()
    def stop_reading(self) -> None:
        self.connection.client_transport.pauseProducing()

    @precondition(lambda self: self.started)
    @rule()
    def read_again(self) -> None:
        self.connection.client_transport.resumeProducing()

    @precondition(lambda self: self.started)
    @rule(rounds=st.integers(1, 3))
    def pump(self, rounds: int) -> None:
        for _ in range(rounds):
            self.connection.pump()

    @precondition(lambda self: self.started)
    @rule()
    def flush(self) -> None:
        self.connection.flush()

    @precondition(lambda self: self.writable)
    @rule(reset=st.booleans())
    def client_goes(self, reset: bool) -> None:
        if reset:
            self.connection.client_transport.abortConnection()
        else:
            self.connection.client_transport.loseConnection()
        self.client_gone = True

    @precondition(lambda self: self.writable)
    @rule()
    def client_half_closes(self) -> None:
        """``shutdown(SHUT_WR)`` after the last request: every answer due, then the server closes."""
        self.connection.client_transport.loseWriteConnection()
        self.half_closed = True

    # -- what must hold after every step ------------------------------------------------

    @invariant()
    def answers_are_right(self) -> None:
        if not self.started:
            return
        data = bytes(self.peer.data[self.seen :])
        self.seen += len(data)
        for event in self.decoder.feed(data):
            assert type(event) is Frame, f"the server sent {event!r}"
            assert not self.error_seen, f"{event!r} came after ERROR 1"
            if self.header.has_id:
                self.check_by_id(event)
            else:
                assert self.in_order, f"{event!r} answers nothing"
                what, value = self.in_order.popleft()
                assert what == "response", f"{event!r} came for a request that must close the connection"
                assert event.payload == value, (event.payload, value)

    def check_by_id(self, frame: Frame) -> None:
        if frame.kind == ERR and frame.id == 0:
            code, _ = decode_error(frame.payload)
            assert code == ErrorCode.PROTOCOL_ERROR and self.ending == "malformed", (code, self.ending)
            missing = self.due_before_error & self.waiting.keys()
            assert not missing, f"ERROR 1 came before the answers to {sorted(missing)}"
            self.error_seen = True
            return
        assert frame.id in self.waiting, f"{frame!r}: id {frame.id} is not waiting for an answer"
        what, value, _ = self.waiting.pop(frame.id)
        if what == "error":
            assert frame.kind == ERR, (frame, what, value)
            assert decode_error(frame.payload)[0] == value, (decode_error(frame.payload), value)
        else:
            assert frame.kind == (RESP if what == "response" else PONG), (frame, what)
            assert frame.payload == value, (frame.payload, value)

    @invariant()
    def bounded(self) -> None:
        if not self.started:
            return
        server = self.server
        assert server.in_flight <= self.max_in_flight, (server.in_flight, self.max_in_flight)
        size = self.header.size
        conn = server._conn  # white box: the bytes held are the point
        if conn is not None:
            decoder = conn._decoder
            assert decoder is None or decoder.buffered <= size + self.max_payload
            backlog = sum(len(e.payload) for e in conn._backlog if isinstance(e, Frame))
            assert backlog <= self.chunk + self.max_payload, (backlog, self.chunk, self.max_payload)
            frame_max = size + max(self.max_payload + 2, ERROR_SLACK)
            queued = sum(len(f) for done in dict(conn._owed).values() if done for f in done[0])
            assert queued <= self.max_in_flight * frame_max
        frame_max = size + max(self.max_payload + 2, ERROR_SLACK)
        transport = self.connection.server_transport
        if transport.producer_paused and not transport.disconnected:
            assert not transport.reading, "the peer does not read its answers, yet the server reads on"
        unsent = transport.buffered
        bound = self.write_buffer + (self.chunk // size + 2 + self.max_in_flight) * frame_max
        assert unsent <= bound, f"{unsent} answer bytes wait for a peer that does not read (bound {bound})"

    def teardown(self) -> None:
        if not self.started:
            return
        # The client reads again (a closed socket discards) and every handler finishes.
        self.connection.client_transport.resumeProducing()
        for _ in range(10_000):  # one handler at a time when max_in_flight is 1
            self.handler.fire_all()
            self.connection.flush()
            if not self.handler.later:
                break
        if self.client_gone:
            assert self.connection.server_transport.disconnected
            return
        self.answers_are_right()
        transport = self.connection.server_transport
        if self.ending is None:
            assert not self.waiting and not self.in_order, (self.waiting, self.in_order)
            assert self.server.in_flight == 0
            if self.half_closed:
                assert transport.disconnected, "the server did not close after answering a half-closed client"
            else:
                assert not transport.disconnected
        elif self.ending == "malformed":
            assert self.error_seen, "no ERROR 1 for a broken header"
            assert transport.disconnected, "the connection stayed open after a broken header"
        else:
            assert self.in_order and self.in_order[0][0] == "fatal", self.in_order
            assert transport.disconnected, "the connection stayed open without an error channel"


class FrameConnectionMachine(RuleBasedStateMachine):
    """The sans-IO :class:`FrameServerConnection` alone: requests, PINGs, oversized
    frames, answers and failures in any order, drain and end of file.

    Rules checked after every step: ``in_flight`` never exceeds ``max_in_flight``;
    without ids every answer comes in request order; each request is answered once;
    a closing connection sends nothing after its fatal error.
    """

    def __init__(self) -> None:
        super().__init__()
        self.started = False

    @initialize(header=st.sampled_from([SPF1, INT32]), max_in_flight=st.integers(1, 4))
    def start(self, header: HeaderSpec, max_in_flight: int) -> None:
        self.header = header
        self.metrics = ServiceMetrics("frame")
        self.conn: FrameServerConnection[PeerFrame] = FrameServerConnection(
            header, max_payload=20, max_in_flight=max_in_flight, counters=self.metrics
        )
        self.decoder: FrameDecoder[Frame] = FrameDecoder(header, max_payload=2**20)
        self.held: list[PeerFrame] = []  # handed over, not answered
        self.sent_order: list[bytes] = []  # ordered mode: payloads of requests, in order
        self.expected: dict[int, bytes] = {}  # with ids: id -> answer payload
        self.next_id = 1
        self.started = True

    def take(self, requests: list[PeerFrame]) -> None:
        self.held.extend(requests)

    @precondition(lambda self: self.started)
    @rule(payload=st.binary(max_size=30))
    def request(self, payload: bytes) -> None:
        ident = self.next_id
        self.next_id += 1
        if not self.header.has_id and self.conn.state.name in ("OPEN", "DRAINING"):
            self.sent_order.append(payload)
        self.take(self.conn.receive_data(build_frame(payload, kind=REQ, id=ident, header=self.header)))

    @precondition(lambda self: self.started and self.header.has_kind)
    @rule(payload=st.binary(max_size=8))
    def ping(self, payload: bytes) -> None:
        ident = self.next_id
        self.next_id += 1
        self.take(self.conn.receive_data(build_frame(payload, kind=PING, id=ident, header=self.header)))

    @precondition(lambda self: self.started and bool(self.held))
    @rule(index=st.integers(0, 10), fail=st.booleans())
    def answer(self, index: int, fail: bool) -> None:
        request = self.held.pop(index % len(self.held))
        if fail and self.header.has_kind:
            self.conn.fail(request, ErrorCode.HANDLER_FAILED, "no")
        else:
            self.conn.answer(request, answer_for(request.payload))
        self.take(self.conn.next_requests())

    @precondition(lambda self: self.started)
    @rule()
    def drain(self) -> None:
        self.conn.start_drain()

    @invariant()
    def bounded_and_in_order(self) -> None:
        if not self.started:
            return
        conn = self.conn
        assert conn.in_flight <= conn.max_in_flight, conn.in_flight
        assert len(self.held) <= conn.max_in_flight
        if conn.in_flight >= conn.max_in_flight:
            assert not conn.wants_read
        data = conn.data_to_send()
        for event in self.decoder.feed(data):
            assert type(event) is Frame, event
            if not self.header.has_id:
                assert event.payload == answer_for(self.sent_order.pop(0)), event
        if conn.must_close:
            assert not self.held or not self.header.has_id or conn.state.name == "MUST_CLOSE"

    def teardown(self) -> None:
        if not self.started:
            return
        for _ in range(100):
            if not self.held:
                break
            request = self.held.pop(0)
            self.conn.answer(request, answer_for(request.payload))
            self.take(self.conn.next_requests())
        self.bounded_and_in_order()
        assert self.conn.in_flight == 0 or self.conn.state.name in ("CLOSING", "MUST_CLOSE")

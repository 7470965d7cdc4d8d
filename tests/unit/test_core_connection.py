"""The sans-IO frame server connection, driven directly: no Twisted, no transport."""

from __future__ import annotations

from unittest import TestCase

from sockproto.core import INT32, SPF1, ErrorCode, Frame, FrameDecoder, HeaderSpec, Kind, decode_error
from sockproto.core.frame_connection import ConnectionState, FrameServerConnection, PeerFrame
from sockproto.serving.metrics import ServiceMetrics
from sockproto.testing import build_frame

REQ, RESP, ERR, PING, PONG = (int(k) for k in Kind)
NO_KIND = HeaderSpec("bare-ids", "id:I length:I")  # ids but no error channel


def connection(
    header: HeaderSpec = SPF1, max_in_flight: int = 64, max_payload: int = 100
) -> tuple[FrameServerConnection[PeerFrame], ServiceMetrics]:
    metrics = ServiceMetrics("frame")
    conn: FrameServerConnection[PeerFrame] = FrameServerConnection(
        header, max_payload=max_payload, max_in_flight=max_in_flight, counters=metrics, peer="the peer"
    )
    return conn, metrics


def frames(data: bytes, header: HeaderSpec = SPF1) -> list[tuple[int | None, int | None, bytes]]:
    decoder: FrameDecoder[Frame] = FrameDecoder(header, max_payload=2**20)
    out = []
    for event in decoder.feed(data):
        assert isinstance(event, Frame), event
        out.append((event.kind, event.id, event.payload))
    return out


def req(payload: bytes, ident: int = 1, header: HeaderSpec = SPF1, kind: int = REQ) -> bytes:
    return build_frame(payload, kind=kind, id=ident, header=header)


class ReceiveTests(TestCase):
    def test_requests_are_handed_over_with_their_peer(self) -> None:
        conn, metrics = connection()
        got = conn.receive_data(req(b"a", 1) + req(b"b", 2))
        self.assertEqual(
            [(r.id, r.payload, r.peer) for r in got], [(1, b"a", "the peer"), (2, b"b", "the peer")]
        )
        self.assertEqual(conn.in_flight, 2)
        self.assertEqual((metrics.requests, metrics.answers), (2, 0))

    def test_answers_go_out_of_order_with_ids(self) -> None:
        conn, metrics = connection()
        first, second = conn.receive_data(req(b"a", 1) + req(b"b", 2))
        conn.answer(second, b"B")
        conn.answer(first, b"A")
        self.assertEqual(frames(conn.data_to_send()), [(RESP, 2, b"B"), (RESP, 1, b"A")])
        self.assertEqual((conn.in_flight, metrics.answers), (0, 2))

    def test_answers_keep_request_order_without_ids(self) -> None:
        conn, _ = connection(INT32)
        first, second = conn.receive_data(req(b"a", header=INT32) + req(b"b", header=INT32))
        conn.answer(second, b"B")
        self.assertEqual(conn.data_to_send(), b"")  # waits for the first
        self.assertEqual(conn.in_flight, 2)
        conn.answer(first, b"A")
        self.assertEqual(frames(conn.data_to_send(), INT32), [(None, None, b"A"), (None, None, b"B")])
        self.assertEqual(conn.in_flight, 0)

    def test_ping_is_answered_inside(self) -> None:
        conn, metrics = connection()
        self.assertEqual(conn.receive_data(req(b"hi", 7, kind=PING)), [])
        self.assertEqual(frames(conn.data_to_send()), [(PONG, 7, b"hi")])
        self.assertEqual((metrics.pings, metrics.requests), (1, 0))

    def test_oversized_gets_error_2_and_goes_on(self) -> None:
        conn, metrics = connection(max_payload=3)
        got = conn.receive_data(req(b"toolong", 1) + req(b"ok", 2))
        self.assertEqual([r.id for r in got], [2])
        ((kind, ident, payload),) = frames(conn.data_to_send())
        self.assertEqual((kind, ident, decode_error(payload)[0]), (ERR, 1, ErrorCode.TOO_LARGE))
        self.assertEqual(metrics.errors[ErrorCode.TOO_LARGE], 1)
        self.assertIs(conn.state, ConnectionState.OPEN)

    def test_unexpected_kind_gets_error_3(self) -> None:
        conn, _ = connection()
        self.assertEqual(conn.receive_data(req(b"x", 4, kind=RESP)), [])
        ((kind, ident, payload),) = frames(conn.data_to_send())
        self.assertEqual((kind, ident, decode_error(payload)[0]), (ERR, 4, ErrorCode.UNEXPECTED_KIND))

    def test_malformed_gets_error_1_id_0_and_closes(self) -> None:
        conn, _ = connection()
        reported: list[tuple[str, str]] = []
        conn.report = lambda category, message: reported.append((category, message))
        conn.receive_data(b"XX" + req(b"x")[2:])
        ((kind, ident, payload),) = frames(conn.data_to_send())
        self.assertEqual((kind, ident, decode_error(payload)[0]), (ERR, 0, ErrorCode.PROTOCOL_ERROR))
        self.assertTrue(conn.must_close)
        self.assertEqual([c for c, _ in reported], ["protocol_error"])
        conn.closed()
        self.assertIs(conn.state, ConnectionState.CLOSED)
        self.assertEqual(conn.receive_data(req(b"late")), [])


class ErrorTests(TestCase):
    def test_fail_sends_an_error(self) -> None:
        conn, metrics = connection()
        (request,) = conn.receive_data(req(b"x", 3))
        conn.fail(request, ErrorCode.HANDLER_FAILED, "boom")
        ((kind, ident, payload),) = frames(conn.data_to_send())
        self.assertEqual((kind, ident, decode_error(payload)), (ERR, 3, (4, "boom")))
        self.assertEqual(metrics.errors[ErrorCode.HANDLER_FAILED], 1)

    def test_answer_too_big_for_the_header_is_error_2(self) -> None:
        small = HeaderSpec(
            "small", "magic:2s version:B kind:B id:I length:B", constants={"magic": b"SP", "version": 1}
        )
        conn, _ = connection(small)
        (request,) = conn.receive_data(req(b"x", 5, header=small))
        conn.answer(request, b"y" * 300)
        ((kind, ident, payload),) = frames(conn.data_to_send(), small)
        self.assertEqual((kind, ident, decode_error(payload)[0]), (ERR, 5, ErrorCode.TOO_LARGE))

    def test_without_an_error_channel_an_error_closes_after_the_answers_due(self) -> None:
        conn, metrics = connection(INT32)
        first, second, third = conn.receive_data(b"".join(req(p, header=INT32) for p in (b"a", b"b", b"c")))
        conn.fail(second, ErrorCode.HANDLER_FAILED, "boom")
        conn.answer(third, b"C")
        self.assertIs(conn.state, ConnectionState.CLOSING)
        self.assertEqual(conn.data_to_send(), b"")
        self.assertFalse(conn.must_close)  # the first is still owed
        conn.answer(first, b"A")
        self.assertEqual(frames(conn.data_to_send(), INT32), [(None, None, b"A")])
        self.assertTrue(conn.must_close)
        self.assertEqual(metrics.errors[ErrorCode.HANDLER_FAILED], 1)

    def test_without_an_error_channel_with_ids_an_oversized_frame_closes(self) -> None:
        conn, _ = connection(NO_KIND, max_payload=2)
        conn.receive_data(req(b"toolong", 1, header=NO_KIND))
        self.assertEqual(conn.data_to_send(), b"")
        self.assertTrue(conn.must_close)

    def test_a_late_answer_after_close_is_abandoned(self) -> None:
        conn, metrics = connection()
        (request,) = conn.receive_data(req(b"x"))
        conn.closed()
        self.assertFalse(conn.wants_answer(request))
        conn.answer(request, b"late")
        self.assertEqual((conn.data_to_send(), metrics.abandoned, metrics.answers), (b"", 1, 0))


class FlowTests(TestCase):
    def test_max_in_flight_stops_reading_and_holds_the_rest(self) -> None:
        conn, _ = connection(max_in_flight=2)
        got = conn.receive_data(b"".join(req(b"x", i) for i in range(1, 5)))
        self.assertEqual([r.id for r in got], [1, 2])
        self.assertFalse(conn.wants_read)
        self.assertIs(conn.reading_change(), False)
        self.assertIsNone(conn.reading_change())
        conn.answer(got[0], b"1")
        self.assertFalse(conn.wants_read)  # the backlog comes first
        self.assertEqual([r.id for r in conn.next_requests()], [3])
        conn.answer(got[1], b"2")
        self.assertEqual([r.id for r in conn.next_requests()], [4])
        self.assertFalse(conn.wants_read)
        self.assertEqual(conn.in_flight, 2)
        self.assertEqual([i for _, i, _ in frames(conn.data_to_send())], [1, 2])

    def test_pause_writing_holds_requests_back(self) -> None:
        conn, _ = connection()
        conn.pause_writing()
        self.assertEqual(conn.receive_data(req(b"x")), [])
        self.assertFalse(conn.wants_read)
        conn.resume_writing()
        self.assertEqual([r.payload for r in conn.next_requests()], [b"x"])
        self.assertTrue(conn.wants_read)

    def test_serve_answers_plain_bytes_at_once(self) -> None:
        conn, metrics = connection()
        later: list[object] = []
        n = conn.serve(req(b"a", 1) + req(b"b", 2), lambda r: r.payload.upper(), lambda *a: later.append(a))
        self.assertEqual(n, 2)
        self.assertEqual(later, [])
        self.assertEqual(frames(conn.data_to_send()), [(RESP, 1, b"A"), (RESP, 2, b"B")])
        self.assertEqual((metrics.requests, metrics.answers, conn.in_flight), (2, 2, 0))

    def test_serve_hands_over_the_rest_and_exceptions(self) -> None:
        conn, _ = connection(INT32)
        later: list[tuple[object, object, object]] = []

        def handler(request: PeerFrame) -> object:
            if request.payload == b"raise":
                raise ValueError("no")
            return bytearray(request.payload) if request.payload == b"ba" else request.payload

        conn.serve(
            b"".join(req(p, header=INT32) for p in (b"ba", b"raise", b"ok")),
            handler,
            lambda *a: later.append(a),
        )
        self.assertEqual([(r.payload, type(res).__name__, type(e).__name__) for r, res, e in later],
                         [(b"ba", "bytearray", "NoneType"), (b"raise", "NoneType", "ValueError"),
                          (b"ok", "bytes", "NoneType")])  # fmt: skip
        self.assertEqual(conn.in_flight, 3)  # "ok" is answered behind them, in request order
        conn.answer(later[0][0], b"BA")  # type: ignore[arg-type]
        conn.fail(later[1][0], ErrorCode.HANDLER_FAILED, "no")  # type: ignore[arg-type]
        conn.answer(later[2][0], b"ok")  # type: ignore[arg-type]
        self.assertEqual(frames(conn.data_to_send(), INT32), [(None, None, b"BA")])
        self.assertTrue(conn.must_close)  # no error channel: fatal; "ok" is never sent


class EndTests(TestCase):
    def test_drain_closes_once_nothing_is_owed(self) -> None:
        conn, _ = connection()
        (request,) = conn.receive_data(req(b"x"))
        conn.start_drain()
        self.assertIs(conn.state, ConnectionState.DRAINING)
        self.assertFalse(conn.wants_read)
        conn.data_to_send()
        self.assertFalse(conn.must_close)
        conn.answer(request, b"y")
        self.assertEqual(frames(conn.data_to_send()), [(RESP, 1, b"y")])
        self.assertTrue(conn.must_close)

    def test_drain_completes_the_frame_under_way(self) -> None:
        conn, _ = connection()
        data = req(b"abc")
        conn.receive_data(data[:5])
        conn.start_drain()
        self.assertTrue(conn.wants_read)
        conn.data_to_send()
        self.assertFalse(conn.must_close)
        (request,) = conn.receive_data(data[5:])
        conn.answer(request, b"ABC")
        self.assertEqual(frames(conn.data_to_send()), [(RESP, 1, b"ABC")])
        self.assertTrue(conn.must_close)

    def test_eof_drops_a_partial_frame_and_closes_after_answers(self) -> None:
        conn, _ = connection()
        data = req(b"a", 1) + req(b"b", 2)
        (request,) = conn.receive_data(data[:-1])
        conn.eof_received()
        conn.data_to_send()
        self.assertFalse(conn.must_close)
        conn.answer(request, b"A")
        self.assertEqual(frames(conn.data_to_send()), [(RESP, 1, b"A")])
        self.assertTrue(conn.must_close)

    def test_time_out_only_when_nothing_is_owed(self) -> None:
        conn, _ = connection()
        (request,) = conn.receive_data(req(b"x"))
        self.assertFalse(conn.time_out())
        conn.answer(request, b"y")
        self.assertTrue(conn.time_out())
        conn.data_to_send()
        self.assertTrue(conn.must_close)


class SansIoTests(TestCase):
    def test_no_twisted_import(self) -> None:
        import ast

        import sockproto.core.frame_connection as module

        with open(module.__file__, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        self.assertFalse([n for n in names if n.startswith(("twisted", "sockproto"))], names)

"""sockproto.testing.memory: the in-memory connection behaves like TCP where it matters."""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from sockproto.testing import MemoryConnection, MemoryTransport, connect_protocols


class Recorder(Protocol):
    """Records every event it gets."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.data = b""

    def connectionMade(self) -> None:
        self.events.append("made")

    def dataReceived(self, data: bytes) -> None:
        self.events.append(("data", data))
        self.data += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.events.append(("lost", reason.type))


@implementer(IHalfCloseableProtocol)
class HalfCloser(Recorder):
    def readConnectionLost(self) -> None:
        self.events.append("read-closed")

    def writeConnectionLost(self) -> None:
        self.events.append("write-closed")


@implementer(IPushProducer)
class Producer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


def pair(server: Recorder | None = None, client: Recorder | None = None, **kw: Any) -> MemoryConnection:
    return connect_protocols(server or Recorder(), client or Recorder(), **kw)


def transport(p: Any) -> MemoryTransport:
    t: MemoryTransport = p.transport
    return t


class DeliveryTests(SynchronousTestCase):
    def test_connection_made_on_both_sides_with_addresses(self) -> None:
        c = pair()
        server, client = c.server, c.client
        assert isinstance(server, Recorder) and isinstance(client, Recorder)
        self.assertEqual((server.events, client.events), (["made"], ["made"]))
        self.assertEqual(c.server_transport.getPeer(), c.client_transport.getHost())
        self.assertEqual(c.client_transport.getPeer().port, 8750)
        self.assertTrue(ITCPTransport.providedBy(c.server_transport))

    def test_nothing_moves_until_pumped(self) -> None:
        c = pair()
        c.client_transport.write(b"hello")
        server = c.server
        assert isinstance(server, Recorder)
        self.assertEqual(server.data, b"")
        self.assertEqual(c.client_transport.buffered, 5)
        self.assertTrue(c.pump())
        self.assertEqual(server.data, b"hello")
        self.assertEqual(bytes(c.server_transport.received), b"hello")
        self.assertFalse(c.pump())

    def test_both_directions(self) -> None:
        c = pair()
        c.client_transport.writeSequence([b"ping", b"!"])
        c.server_transport.write(b"pong")
        c.flush()
        server, client = c.server, c.client
        assert isinstance(server, Recorder) and isinstance(client, Recorder)
        self.assertEqual((server.data, client.data), (b"ping!", b"pong"))

    def test_chunk_size_one_delivers_byte_by_byte(self) -> None:
        c = pair(chunk_size=1)
        c.client_transport.write(b"abc")
        c.flush()
        server = c.server
        assert isinstance(server, Recorder)
        self.assertEqual(server.events[1:], [("data", b"a"), ("data", b"b"), ("data", b"c")])

    def test_bad_chunk_size(self) -> None:
        self.assertRaises(ValueError, MemoryConnection, Recorder(), Recorder(), chunk_size=0)

    def test_write_takes_bytes_only(self) -> None:
        c = pair()
        self.assertRaises(TypeError, c.client_transport.write, "text")

    def test_flush_gives_up_on_endless_talk(self) -> None:
        class Echo(Recorder):
            def dataReceived(self, data: bytes) -> None:
                assert self.transport is not None
                self.transport.write(data)

        c = pair(Echo(), Echo())
        c.client_transport.write(b"x")
        self.assertRaises(RuntimeError, c.flush, max_rounds=50)


class FlowControlTests(SynchronousTestCase):
    def test_paused_reader_gets_nothing_until_resumed(self) -> None:
        c = pair()
        c.server_transport.pauseProducing()
        c.client_transport.write(b"wait")
        c.flush()
        server = c.server
        assert isinstance(server, Recorder)
        self.assertEqual(server.data, b"")
        self.assertEqual(c.client_transport.buffered, 4)
        c.server_transport.resumeProducing()
        c.flush()
        self.assertEqual(server.data, b"wait")

    def test_pausing_during_chunks_keeps_the_rest(self) -> None:
        class PauseAfterFirst(Recorder):
            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                transport(self).pauseProducing()

        c = pair(PauseAfterFirst(), chunk_size=2)
        c.client_transport.write(b"aabbcc")
        c.flush()
        server = c.server
        assert isinstance(server, Recorder)
        self.assertEqual(server.data, b"aa")
        c.server_transport.resumeProducing()
        c.pump()
        self.assertEqual(server.data, b"aabb")

    def test_streaming_producer_paused_when_buffer_full_and_resumed_when_drained(self) -> None:
        c = pair(write_buffer=10)
        producer = Producer()
        c.server_transport.registerProducer(producer, True)
        c.client_transport.pauseProducing()  # the client does not read
        c.server_transport.write(b"x" * 10)
        self.assertEqual(producer.calls, [])
        c.server_transport.write(b"y")
        self.assertEqual(producer.calls, ["pause"])
        c.server_transport.write(b"z")
        self.assertEqual(producer.calls, ["pause"])  # once
        c.flush()
        self.assertEqual(producer.calls, ["pause"])
        c.client_transport.resumeProducing()
        c.flush()
        self.assertEqual(producer.calls, ["pause", "resume"])

    def test_second_producer_refused(self) -> None:
        c = pair()
        c.server_transport.registerProducer(Producer(), True)
        self.assertRaises(RuntimeError, c.server_transport.registerProducer, Producer(), True)
        c.server_transport.unregisterProducer()
        c.server_transport.registerProducer(Producer(), False)

    def test_stop_producing_closes(self) -> None:
        c = pair()
        c.server_transport.stopProducing()
        c.flush()
        self.assertTrue(c.closed)


class ClosingTests(SynchronousTestCase):
    def test_lose_connection_after_buffered_bytes(self) -> None:
        c = pair()
        c.server_transport.write(b"bye")
        c.server_transport.loseConnection()
        c.server_transport.write(b"dropped")
        c.flush()
        server, client = c.server, c.client
        assert isinstance(server, Recorder) and isinstance(client, Recorder)
        self.assertEqual(client.events, ["made", ("data", b"bye"), ("lost", ConnectionDone)])
        self.assertEqual(server.events[-1], ("lost", ConnectionDone))
        self.assertTrue(c.closed)

    def test_close_tells_half_closeable_peer_with_read_connection_lost(self) -> None:
        client = HalfCloser()
        c = pair(client=client)
        c.server_transport.loseConnection()
        c.flush()
        self.assertEqual(client.events, ["made", "read-closed"])
        client_transport = transport(client)
        client_transport.loseConnection()
        c.flush()
        self.assertEqual(client.events[-1], ("lost", ConnectionDone))

    def test_half_close_between_half_closeable_protocols(self) -> None:
        server, client = HalfCloser(), HalfCloser()
        c = pair(server, client)
        c.client_transport.write(b"request")
        c.client_transport.loseWriteConnection()
        c.client_transport.write(b"too late")
        c.flush()
        self.assertEqual(server.events, ["made", ("data", b"request"), "read-closed"])
        self.assertEqual(client.events, ["made", "write-closed"])
        c.server_transport.write(b"answer")
        c.server_transport.loseConnection()
        c.flush()
        self.assertEqual(client.events[2:], [("data", b"answer"), "read-closed"])
        self.assertEqual(server.events[-1], ("lost", ConnectionDone))
        c.client_transport.loseConnection()
        c.flush()
        self.assertTrue(c.closed)

    def test_half_close_to_plain_protocol_closes_it_and_the_writer_reads_eof(self) -> None:
        server, client = Recorder(), HalfCloser()
        c = pair(server, client)
        c.client_transport.loseWriteConnection()
        c.flush()
        self.assertEqual(server.events, ["made", ("lost", ConnectionDone)])
        self.assertEqual(client.events, ["made", "write-closed", "read-closed"])

    def test_abort_discards_buffered_bytes_and_resets_peer(self) -> None:
        c = pair()
        c.server_transport.write(b"never seen")
        c.server_transport.abortConnection()
        c.flush()
        server, client = c.server, c.client
        assert isinstance(server, Recorder) and isinstance(client, Recorder)
        self.assertEqual(client.events, ["made", ("lost", ConnectionLost)])
        self.assertEqual(server.events, ["made", ("lost", ConnectionAborted)])

    def test_abort_is_not_synchronous(self) -> None:
        c = pair()
        c.server_transport.abortConnection()
        server = c.server
        assert isinstance(server, Recorder)
        self.assertEqual(server.events, ["made"])

    def test_producer_stopped_when_connection_lost(self) -> None:
        c = pair()
        producer = Producer()
        c.server_transport.registerProducer(producer, True)
        c.client_transport.loseConnection()
        c.flush()
        self.assertEqual(producer.calls, ["stop"])
        self.assertIsNone(c.server_transport.producer)

    def test_bytes_to_a_closed_peer_are_dropped(self) -> None:
        server, client = HalfCloser(), Recorder()
        c = pair(server, client)
        c.client_transport.loseConnection()
        c.flush()
        c.server_transport.write(b"into the void")
        c.flush()
        self.assertEqual(client.data, b"")
        self.assertEqual(c.server_transport.buffered, 0)

"""A state machine over the datagram server in SPF/1 mode (issue 3's rules), in memory.

Several peers (IPv4, IPv6, IPv4-mapped) send requests with a few ids, so that many
are retransmissions, plus pings and every kind of garbage; handlers answer at once,
later, in any order, fail, or answer too much; time passes.  After every step:

- garbage (too short, foreign, wrong version, truncated, trailing bytes, a kind a
  server does not take) gets no reply and is counted under its reason;
- every reply is one valid SPF/1 datagram to the sender, with the request's id, within
  ``max_datagram``: RESPONSE, PONG, ERROR 4 for a failed handler, ERROR 2 for an answer
  too big;
- a retransmission is answered once: dropped while its handler runs, answered from the
  reply cache with the very same bytes while the cache must still hold it (it holds at
  most ``cache_entries`` replies of at most ``cache_bytes`` bytes for ``cache_age`` s);
  the handler runs again only once the cache may have forgotten the reply;
- at most ``max_pending`` handlers run; past that, new requests are dropped;
- every counter of :class:`~sockproto.datagram.stats.DatagramStats` matches.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from sockproto.core import ErrorCode, Frame, Kind, decode_error
from sockproto.core.datagram import CLIENT_KINDS, DropReason, encode_datagram, parse_datagram
from sockproto.datagram.server import DatagramServerFactory
from sockproto.testing import serve_datagrams

from .machines_common import FAILING, LATER, Boom, ScriptedHandler, answer_for, payload_for

PEERS = [("127.0.0.1", 4000), ("127.0.0.1", 4001), ("::1", 4000), ("::ffff:127.0.0.1", 4002)]
REQ, RESP, ERR, PING, PONG = (int(k) for k in Kind)
Key = tuple[tuple[str, int], int]


class _Stored:
    """A reply the cache was given, and what was stored after it."""

    def __init__(self, reply: bytes, at: float, seq: int, bytes_before: int) -> None:
        self.reply = reply
        self.at = at
        self.seq = seq
        self.bytes_before = bytes_before


class DatagramServerMachine(RuleBasedStateMachine):
    """A real :class:`DatagramServerProtocol` on a fake UDP port."""

    def __init__(self) -> None:
        super().__init__()
        self.started = False

    @initialize(
        max_datagram=st.integers(64, 120),
        max_pending=st.integers(1, 4),
        cache_entries=st.integers(0, 4),
        cache_bytes=st.integers(0, 300),
        cache_age=st.integers(1, 10),
    )
    def start(
        self, max_datagram: int, max_pending: int, cache_entries: int, cache_bytes: int, cache_age: int
    ) -> None:
        self.max_datagram = max_datagram
        self.max_pending = max_pending
        self.entries = cache_entries
        self.bytes = cache_bytes
        self.age = cache_age
        self.clock = Clock()
        self.handler = ScriptedHandler(big=max_datagram)
        factory = DatagramServerFactory(
            self.handler,
            max_datagram=max_datagram,
            max_pending=max_pending,
            cache_entries=cache_entries,
            cache_bytes=cache_bytes,
            cache_age=cache_age,
            clock=self.clock,
        )
        self.port = serve_datagrams(factory)
        self.proto: Any = self.port.protocol
        self.stored: dict[Key, _Stored] = {}
        self.store_seq = 0
        self.store_bytes = 0  # reply bytes stored so far, all together
        self.running: dict[Key, tuple[Deferred[bytes], bytes, bytes]] = {}
        self.counts: dict[str, int] = {"received": 0, "handled": 0, "replied": 0, "from_cache": 0}
        self.drops = dict.fromkeys(DropReason, 0)
        self.started = True

    # -- the model ----------------------------------------------------------------------

    def expected_reply(self, ident: int, tag: bytes, payload: bytes) -> tuple[int, Any]:
        if tag in FAILING:
            return ERR, ErrorCode.HANDLER_FAILED
        answer = b"L" * self.max_datagram if tag == b"L" else answer_for(payload)
        if len(answer) + 12 > self.max_datagram:
            return ERR, ErrorCode.TOO_LARGE
        return RESP, answer

    def check_reply(
        self, sent: list[tuple[bytes, Any]], addr: tuple[str, int], ident: int, want: Any
    ) -> bytes:
        assert len(sent) == 1, f"{len(sent)} replies to one datagram: {sent}"
        [(reply, to)] = sent
        assert to == addr, (to, addr)
        assert len(reply) <= self.max_datagram, (len(reply), self.max_datagram)
        frame = parse_datagram(reply, CLIENT_KINDS)
        assert isinstance(frame, Frame), frame
        assert frame.id == ident, (frame.id, ident)
        kind, value = want
        assert frame.kind == kind, (frame.kind, kind)
        if kind == ERR:
            assert decode_error(frame.payload)[0] == value, (decode_error(frame.payload), value)
        else:
            assert frame.payload == value, (frame.payload, value)
        self.counts["replied"] += 1
        return reply

    def store(self, key: Key, reply: bytes) -> None:
        self.store_seq += 1
        self.stored[key] = _Stored(reply, self.clock.seconds(), self.store_seq, self.store_bytes)
        self.store_bytes += len(reply)

    def must_hit(self, s: _Stored) -> bool:
        """Whether the cache cannot have forgotten ``s`` under its documented bounds."""
        newer = self.store_seq - s.seq
        newer_bytes = self.store_bytes - s.bytes_before  # s's bytes and all stored after it
        return (
            self.entries > 0
            and newer < self.entries
            and newer_bytes <= self.bytes
            and self.clock.seconds() - s.at <= self.age
        )

    # -- the peers ----------------------------------------------------------------------

    @precondition(lambda self: self.started)
    @rule(
        peer=st.sampled_from(PEERS),
        ident=st.integers(1, 6),
        tag=st.sampled_from([b"", b"S", b"A", b"C", b"D", b"E", b"F", b"L"]),
        size=st.integers(0, 40),
    )
    def request(self, peer: tuple[str, int], ident: int, tag: bytes, size: int) -> None:
        payload = payload_for(tag, size)
        key = (peer, ident)
        calls = len(self.handler.calls)
        sent = self.port.receive(encode_datagram(REQ, ident, payload), peer)
        self.counts["received"] += 1
        called = len(self.handler.calls) > calls
        if key in self.running:
            assert not sent and not called, "a retransmission ran the handler while it was running"
            self.drops[DropReason.IN_PROGRESS] += 1
            return
        first = self.stored.get(key)
        if not called and sent:  # answered from the cache
            assert first is not None and sent == [(first.reply, peer)], (sent, first)
            self.counts["from_cache"] += 1
            self.counts["replied"] += 1
            return
        if first is not None:
            assert not self.must_hit(first), "the cache forgot a reply it must hold"
        if len(self.running) >= self.max_pending:
            assert not sent and not called, "a request past max_pending was served"
            self.drops[DropReason.OVERLOADED] += 1
            return
        assert called, "a new request did not run the handler"
        self.counts["handled"] += 1
        tag = payload[:1]
        if tag in LATER:
            assert not sent
            d, _, _ = self.handler.later.pop()
            self.running[key] = (d, payload, tag)
            return
        reply = self.check_reply(sent, peer, ident, self.expected_reply(ident, tag, payload))
        self.store(key, reply)

    @precondition(lambda self: self.started)
    @rule(peer=st.sampled_from(PEERS), ident=st.integers(0, 6), size=st.integers(0, 80))
    def ping(self, peer: tuple[str, int], ident: int, size: int) -> None:
        payload = b"p" * size
        sent = self.port.receive(encode_datagram(PING, ident, payload), peer)
        self.counts["received"] += 1
        fits = size + 12 <= self.max_datagram
        self.check_reply(sent, peer, ident, (PONG, payload) if fits else (ERR, ErrorCode.TOO_LARGE))

    @precondition(lambda self: self.started)
    @rule(
        peer=st.sampled_from(PEERS),
        what=st.sampled_from(["short", "magic", "version", "truncated", "trailing", "kind"]),
        n=st.integers(0, 11),
        kind=st.sampled_from([RESP, ERR, PONG, 0, 99]),
    )
    def garbage(self, peer: tuple[str, int], what: str, n: int, kind: int) -> None:
        good = encode_datagram(REQ, 1, b"payload")
        reason = {
            "short": DropReason.TOO_SHORT,
            "magic": DropReason.FOREIGN,
            "version": DropReason.FOREIGN,
            "truncated": DropReason.TRUNCATED,
            "trailing": DropReason.TRAILING,
            "kind": DropReason.UNEXPECTED_KIND,
        }[what]
        datagram = {
            "short": good[:n],
            "magic": b"XP" + good[2:],
            "version": b"SP\x02" + good[3:],
            "truncated": good[: 12 + n % 7],
            "trailing": good + b"x" * (n + 1),
            "kind": encode_datagram(kind, 1, b"x" * n),
        }[what]
        calls = len(self.handler.calls)
        sent = self.port.receive(datagram, peer)
        self.counts["received"] += 1
        self.drops[reason] += 1
        assert not sent, f"garbage ({what}) got a reply: {sent}"
        assert len(self.handler.calls) == calls

    @precondition(lambda self: self.started and bool(self.running))
    @rule(index=st.integers(0, 10))
    def handler_done(self, index: int) -> None:
        key = sorted(self.running, key=repr)[index % len(self.running)]
        d, payload, tag = self.running.pop(key)
        before = len(self.port.written)
        if tag == b"D":
            d.callback(answer_for(payload))
        else:
            d.errback(Boom("asked to fail later"))
        peer, ident = key
        reply = self.check_reply(
            self.port.written[before:], peer, ident, self.expected_reply(ident, tag, payload)
        )
        self.store(key, reply)

    @precondition(lambda self: self.started)
    @rule(seconds=st.integers(0, 6))
    def time_passes(self, seconds: int) -> None:
        self.clock.advance(seconds)

    # -- after every step ----------------------------------------------------------------

    @invariant()
    def bounded_and_counted(self) -> None:
        if not self.started:
            return
        cache = self.proto.cache
        assert len(cache) <= self.entries and cache.size <= self.bytes, (len(cache), cache.size)
        assert self.proto.pending == len(self.running) == cache.running <= self.max_pending
        stats = self.proto.stats
        got = {"received": stats.received, "handled": stats.handled, "replied": stats.replied}
        got["from_cache"] = stats.from_cache
        assert got == self.counts, (got, self.counts)
        assert stats.drops == self.drops, (stats.drops, self.drops)
        assert len(self.port.written) == stats.replied

    def teardown(self) -> None:
        while self.started and self.running:
            self.handler_done(0)

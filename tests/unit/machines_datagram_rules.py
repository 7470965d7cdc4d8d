"""A state machine over the sans-IO datagram rules (:class:`~sockproto.core.datagram_server.DatagramRules`).

The protocol-level machine (:mod:`.machines_datagram`) drives the Twisted adapter; this
one drives the rules directly, as h11's tests drive its ``Connection``: datagrams from
a few peers (new requests, retransmissions, PINGs, garbage), handler answers and
failures in any order, time passing.  After every step:

- garbage is dropped under its reason and never replied to;
- a new request goes to the handler only under ``max_pending`` running calls;
- a retransmission while its call runs is dropped (``in_progress``); once answered,
  it gets the very bytes of the first reply while the cache must still hold them;
- every reply is one SPF/1 datagram with the request's id, within ``max_datagram``;
- ``received`` counts every datagram, and each one ends in exactly one outcome.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sockproto.core import ErrorCode, Kind
from sockproto.core.datagram import DropReason, encode_datagram, parse_datagram
from sockproto.core.datagram_cache import ReplyCache
from sockproto.core.datagram_server import DatagramRules
from sockproto.datagram.stats import DatagramStats
from sockproto.request import Request

PEERS = [("127.0.0.1", 4000), ("127.0.0.1", 4001), ("::1", 4000)]
REQ, RESP, ERR, PING, PONG = (int(k) for k in Kind)
GARBAGE = {
    b"": DropReason.TOO_SHORT,
    b"SP\x01": DropReason.TOO_SHORT,
    b"GET / HTTP/1.0\r\n\r\n": DropReason.FOREIGN,
}


class _Time:
    """The cache's clock: seconds that only the machine moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def seconds(self) -> float:
        return self.now


class DatagramRulesMachine(RuleBasedStateMachine):
    """The rules of one SPF/1 socket, with the handler played by the machine."""

    @initialize(max_datagram=st.integers(64, 120), max_pending=st.integers(1, 3))
    def start(self, max_datagram: int, max_pending: int) -> None:
        self.time = _Time()
        self.stats = DatagramStats()
        self.rules = DatagramRules(
            mode="spf1",
            max_datagram=max_datagram,
            max_pending=max_pending,
            amplification=None,
            rate=None,
            verifier=None,
            cache=ReplyCache(self.time, max_entries=1000, max_bytes=1 << 20, max_age=30.0),
            stats=self.stats,
            peers={addr: addr for addr in PEERS},
            request_type=Request,
        )
        self.running: dict[tuple[tuple[str, int], int], tuple[Any, int]] = {}  # key -> (request, size)
        self.replied: dict[tuple[tuple[str, int], int], bytes] = {}  # first reply per key
        self.ids = 0
        self.datagrams = 0
        self.outcomes = 0

    def _receive(self, datagram: bytes, addr: tuple[str, int]) -> Any:
        self.datagrams += 1
        return self.rules.receive(datagram, addr, len(self.running))

    def _check_reply(self, reply: bytes, ident: int, kinds: tuple[int, ...]) -> None:
        assert len(reply) <= self.rules.max_datagram
        frame = parse_datagram(reply, frozenset(kinds))
        assert not isinstance(frame, DropReason), frame
        assert frame.id == ident

    @rule(peer=st.sampled_from(PEERS), size=st.integers(0, 150))
    def new_request(self, peer: tuple[str, int], size: int) -> None:
        self.ids += 1
        datagram = encode_datagram(REQ, self.ids, b"q" * size)
        outcome = self._receive(datagram, peer)
        if len(self.running) >= self.rules.max_pending:
            assert outcome is DropReason.OVERLOADED
        else:
            assert isinstance(outcome, Request) and outcome.id == self.ids and outcome.peer == peer
            self.rules.begin(outcome, peer)
            self.running[(peer, self.ids)] = (outcome, len(datagram))
            return  # counted by answer()
        self.outcomes += 1

    @precondition(lambda self: self.running)
    @rule(data=st.data(), fail=st.booleans(), size=st.integers(0, 150))
    def answer(self, data: st.DataObject, fail: bool, size: int) -> None:
        key = data.draw(st.sampled_from(sorted(self.running)))
        request, request_size = self.running.pop(key)
        result: bytes | tuple[ErrorCode, str] = (ErrorCode.HANDLER_FAILED, "boom") if fail else b"a" * size
        self.stats.requests += 1
        self.stats.received += 1
        self.stats.bytes_in += request_size
        reply = self.rules.answer(request, key[0], request_size, result)
        assert reply is not None  # no guard: every answer has a reply
        self._check_reply(reply, key[1], (RESP, ERR))
        if fail or size + 12 > self.rules.max_datagram:
            assert reply[3] == ERR
        self.replied[key] = reply
        self.outcomes += 1

    @precondition(lambda self: self.running or self.replied)
    @rule(data=st.data())
    def retransmit(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted([*self.running, *self.replied])))
        (peer, ident) = key
        outcome = self._receive(encode_datagram(REQ, ident, b"again"), peer)
        self.outcomes += 1
        if key in self.running:
            assert outcome is DropReason.IN_PROGRESS
        else:
            assert outcome == self.replied[key]  # the very same bytes, from the cache

    @rule(peer=st.sampled_from(PEERS), payload=st.binary(max_size=20))
    def ping(self, peer: tuple[str, int], payload: bytes) -> None:
        self.ids += 1
        outcome = self._receive(encode_datagram(PING, self.ids, payload), peer)
        self.outcomes += 1
        assert isinstance(outcome, bytes)
        self._check_reply(outcome, self.ids, (PONG,))

    @rule(peer=st.sampled_from(PEERS), garbage=st.sampled_from(sorted(GARBAGE)))
    def garbage(self, peer: tuple[str, int], garbage: bytes) -> None:
        outcome = self._receive(garbage, peer)
        self.outcomes += 1
        assert outcome is GARBAGE[garbage]

    @rule(seconds=st.floats(0, 5))
    def time_passes(self, seconds: float) -> None:
        self.time.now += seconds  # cached replies stay within max_age (30 s) for a few steps
        if self.time.now > 25:
            self.replied.clear()  # the cache may forget them from here on: not checked

    @invariant()
    def every_datagram_counted_once(self) -> None:
        if not hasattr(self, "stats"):
            return
        assert self.stats.received == self.datagrams - len(self.running)
        assert self.outcomes == self.datagrams - len(self.running)

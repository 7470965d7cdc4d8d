"""What the state machines of ``test_state_machines`` share: a scriptable handler, a raw peer."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol

from sockproto.request import Request

TAGS = {
    b"S": "sync",  # returns bytes at once
    b"A": "fired",  # returns a Deferred that already fired
    b"C": "coroutine",  # returns a coroutine that does not wait
    b"D": "later",  # returns a Deferred the machine fires later
    b"E": "later-fail",  # returns a Deferred the machine fails later
    b"F": "raise",  # raises
}
SYNC_OK = frozenset((b"", b"S", b"A", b"C"))
LATER = frozenset((b"D", b"E"))
FAILING = frozenset((b"F", b"E"))

tags = st.sampled_from([b"", *TAGS])


class Boom(Exception):
    """What the scripted handlers raise (flushed from the log by the tests)."""


def answer_for(payload: bytes) -> bytes:
    """What a scripted handler answers when it succeeds."""
    return b"<" + payload + b">"


def payload_for(tag: bytes, length: int) -> bytes:
    """A ``length``-byte payload that tells the scripted handler to behave as ``tag`` says."""
    if length == 0:
        return b""
    return (tag or b"S") + (bytes(range(97, 123)) * (length // 26 + 1))[: length - 1]


class ScriptedHandler:
    """A handler whose behaviour the request's first byte picks (:data:`TAGS`).

    :ivar later: the Deferreds not fired yet, with their payload and whether they
        succeed, oldest first.
    :ivar calls: the payloads the handler was called with.
    """

    def __init__(self, big: int = 0) -> None:
        self.later: list[tuple[Deferred[bytes], bytes, bool]] = []
        self.calls: list[bytes] = []
        self.big = big

    def __call__(self, request: Request) -> Any:
        payload = request.payload
        self.calls.append(payload)
        tag = payload[:1]
        if tag == b"F":
            raise Boom("asked to fail")
        if tag == b"L":
            return b"L" * self.big
        if tag == b"A":
            return succeed(answer_for(payload))
        if tag == b"C":

            async def answer() -> bytes:
                return answer_for(payload)

            return answer()
        if tag in LATER:
            d: Deferred[bytes] = Deferred()
            self.later.append((d, payload, tag == b"D"))
            return d
        return answer_for(payload)

    def fire(self, index: int) -> tuple[bytes, bool] | None:
        """Fire the ``index``-th waiting Deferred (modulo); return its payload and success."""
        live = [(n, entry) for n, entry in enumerate(self.later) if not entry[0].called]
        if not live:
            self.later.clear()
            return None
        n, (d, payload, ok) = live[index % len(live)]
        del self.later[n]
        if ok:
            d.callback(answer_for(payload))
        else:
            d.errback(Boom("asked to fail later"))
        return payload, ok

    def fire_all(self) -> None:
        while self.fire(0) is not None:
            pass


class Peer(Protocol):
    """The far end of a connection, played by the machine: it collects what it reads."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason

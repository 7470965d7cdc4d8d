"""Hypothesis: the drop-ins behave as Twisted's classes, call for call.

The same random stream, cut into random reads, goes to the drop-in and to Twisted's
class; their callbacks read ``recvd``, pause, assign ``recvd`` or change
``MAX_LENGTH`` on the same deliveries, and the two logs must be equal.  Comparison
ends at the first refusal, where the classes differ on purpose: Twisted's keeps
buffering and calls ``lengthLimitExceeded`` again on each read, the drop-in drops
later bytes.
"""

from __future__ import annotations

import struct
from itertools import pairwise
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.protocols import basic
from twisted.trial.unittest import SynchronousTestCase

from sockproto import compat

PAIRS = [
    (basic.Int32StringReceiver, compat.Int32StringReceiver),
    (basic.Int16StringReceiver, compat.Int16StringReceiver),
    (basic.Int8StringReceiver, compat.Int8StringReceiver),
]

# What a callback does on the n-th delivery: ("recvd",), ("pause",), ("max", n), ("cut", k).
ACTIONS = st.one_of(
    st.just(("recvd",)),
    st.just(("pause",)),
    st.tuples(st.just("max"), st.integers(0, 70)),
    st.tuples(st.just("cut"), st.integers(0, 6)),
)


def scripted(
    base: type[Any], script: dict[int, tuple[Any, ...]], log: list[tuple[Any, ...]], join_limit: int
) -> Any:
    class Scripted(base):  # type: ignore[misc,valid-type]
        MAX_LENGTH = 50
        _join_limit = join_limit  # 0: every string straddling reads takes the long-string path

        def stringReceived(self, string: bytes) -> None:
            log.append(("string", string))
            action = script.get(sum(1 for e in log if e[0] == "string"), ("none",))
            if action[0] == "recvd":
                log.append(("recvd", self.recvd))
            elif action[0] == "pause":
                self.pauseProducing()
            elif action[0] == "max":
                self.MAX_LENGTH = action[1]
            elif action[0] == "cut":
                self.recvd = self.recvd[action[1] :]

        def lengthLimitExceeded(self, length: int) -> None:
            log.append(("refused", length, self.recvd))

    proto = Scripted()
    proto.makeConnection(StringTransport())
    return proto


def run(
    base: type[Any], script: dict[int, Any], reads: list[bytes], resumes: list[bool], join_limit: int = 0
) -> list[Any]:
    log: list[tuple[Any, ...]] = []
    proto = scripted(base, script, log, join_limit)
    steps: list[tuple[str, bytes]] = []
    for read, resume in zip(reads, resumes + [False] * len(reads), strict=False):
        steps += [("read", read), ("resume", b"")] if resume else [("read", read)]
    steps += [("end", b"")] * (len(script) + 1)  # each pause in the script needs one resume
    for step, read in steps:
        if step == "read":
            proto.dataReceived(read)
        elif step == "end":
            log.append(("end", proto.paused, proto.recvd))
        if proto.paused and step != "read":
            proto.resumeProducing()
        if any(e[0] == "refused" for e in log):
            break
    return log


@st.composite
def streams(draw: st.DrawFn, fmt: str) -> bytes:
    lengths = draw(st.lists(st.integers(0, 60), max_size=12))
    body = b"".join(struct.pack(fmt, n) + bytes([i % 256]) * n for i, n in enumerate(lengths))
    return body + draw(st.binary(max_size=6))  # maybe a partial last string


class OracleTests(SynchronousTestCase):
    @given(st.data())
    def test_same_log_as_twisted(self, data: st.DataObject) -> None:
        twisted_cls, compat_cls = data.draw(st.sampled_from(PAIRS))
        stream = data.draw(streams(twisted_cls.structFormat))
        cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=10))))
        reads = [stream[a:b] for a, b in pairwise([0, *cuts, len(stream)])]
        script = data.draw(st.dictionaries(st.integers(1, 12), ACTIONS, max_size=6))
        resumes = data.draw(st.lists(st.booleans(), max_size=len(reads)))
        join_limit = data.draw(st.sampled_from([0, 7, 16 * 1024]))
        expected = run(twisted_cls, script, reads, resumes)
        self.assertEqual(run(compat_cls, script, reads, resumes, join_limit), expected)

    @given(st.data())
    def test_one_string_per_read(self, data: st.DataObject) -> None:
        """Reads cut at string boundaries take the one-string fast path: same log."""
        twisted_cls, compat_cls = data.draw(st.sampled_from(PAIRS))
        fmt = twisted_cls.structFormat
        lengths = data.draw(st.lists(st.integers(0, 60), max_size=12))
        reads = [struct.pack(fmt, n) + bytes([i % 256]) * n for i, n in enumerate(lengths)]
        script = data.draw(st.dictionaries(st.integers(1, 12), ACTIONS, max_size=6))
        resumes = data.draw(st.lists(st.booleans(), max_size=len(reads)))
        expected = run(twisted_cls, script, reads, resumes)
        self.assertEqual(run(compat_cls, script, reads, resumes), expected)

    def test_oracle_sees_differences(self) -> None:
        """The comparison is not vacuous: a wrong receiver gives another log."""

        class Wrong(compat.Int16StringReceiver):
            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data[::-1])

        reads = [struct.pack("!H", 2) + b"ab", struct.pack("!H", 1) + b"c"]
        self.assertNotEqual(run(Wrong, {}, reads, []), run(basic.Int16StringReceiver, {}, reads, []))
        self.assertEqual(
            run(compat.Int16StringReceiver, {1: ("recvd",)}, reads, []),
            run(basic.Int16StringReceiver, {1: ("recvd",)}, reads, []),
        )

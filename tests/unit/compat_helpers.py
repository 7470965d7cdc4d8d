"""What the sockproto.compat tests share: a recording receiver, a transport, a framer."""

from __future__ import annotations

import struct

from twisted.internet.testing import StringTransport

from sockproto import compat


class Recorder(compat.Int32StringReceiver):
    """Records strings and refusals; may pause after chosen strings."""

    MAX_LENGTH = 2**31

    def __init__(self, pause_after: frozenset[int] = frozenset()) -> None:
        self.received: list[bytes] = []
        self.refused: list[int] = []
        self.pause_after = pause_after

    def stringReceived(self, string: bytes) -> None:
        self.received.append(string)
        if len(self.received) in self.pause_after:
            self.pauseProducing()

    def lengthLimitExceeded(self, length: int) -> None:
        self.refused.append(length)


def connect(proto: compat.IntNStringReceiver) -> StringTransport:
    transport = StringTransport()
    proto.makeConnection(transport)
    return transport


def msg(payload: bytes, fmt: str = "!I") -> bytes:
    return struct.pack(fmt, len(payload)) + payload

"""An answer the socket takes whole closes the connection at once, over TCP, TCP6 and UNIX sockets.

White box: :func:`sockproto.halfclose.server._answer_and_close` sends the answer and
closes in the same reactor pass as the client's half-close (``connectionLost`` has
run when ``readConnectionLost`` returns); an answer over the transport's
``SEND_LIMIT``, or an asynchronous one, still reaches the client whole, followed by
a clean end of file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from sockproto.halfclose.server import HalfCloseServerFactory, HalfCloseServerProtocol
from sockproto.handlers import echo
from sockproto.request import Request

from .halfclose_peers import FAMILIES, serve, talk, until


class _Probe(HalfCloseServerProtocol):
    """Notes, as ``readConnectionLost`` returns, whether the connection is closed already."""

    closed_at_once: list[bool]

    def readConnectionLost(self) -> None:
        super().readConnectionLost()
        self.closed_at_once.append(self._lost)


def _factory(handler: object) -> tuple[HalfCloseServerFactory, list[bool]]:
    factory = HalfCloseServerFactory(handler, max_request=4 * 1024 * 1024)  # type: ignore[arg-type]
    closed: list[bool] = []
    factory.protocol = type("Probe", (_Probe,), {"closed_at_once": closed})
    return factory, closed


@pytest.mark.parametrize("family", FAMILIES)
@pytest_twisted.ensureDeferred
async def test_a_small_answer_closes_at_once(family: str, tmp_path: Path) -> None:
    factory, closed = _factory(echo)
    port, target = await serve(factory, family, tmp_path)
    try:
        for payload in (b"ping", b"", os.urandom(1000)):  # well within any socket send buffer
            assert await deferToThread(talk, target, payload) == payload
        assert closed == [True, True, True]
        await until(lambda: not factory.connections)
        metrics = factory.metrics
        assert (metrics.answers, metrics.abandoned, metrics.connections_open) == (3, 0, 0)
    finally:
        await port.stopListening()


@pytest.mark.parametrize("family", FAMILIES)
@pytest_twisted.ensureDeferred
async def test_an_answer_over_the_send_limit_goes_the_usual_way(family: str, tmp_path: Path) -> None:
    payload = os.urandom(3 * 1024 * 1024)  # over SEND_LIMIT (128 KiB): Twisted's buffer and next pass
    factory, closed = _factory(echo)
    port, target = await serve(factory, family, tmp_path)
    try:
        assert await deferToThread(talk, target, payload) == payload
        assert closed == [False]
        await until(lambda: not factory.connections)
        assert factory.metrics.abandoned == 0
    finally:
        await port.stopListening()


@pytest.mark.parametrize("family", FAMILIES)
@pytest_twisted.ensureDeferred
async def test_an_asynchronous_answer_closes_when_it_comes(family: str, tmp_path: Path) -> None:
    from twisted.internet import reactor

    def later(request: Request) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        reactor.callLater(0.01, d.callback, request.payload[::-1])  # type: ignore[attr-defined]
        return d

    factory, closed = _factory(later)
    port, target = await serve(factory, family, tmp_path)
    try:
        assert await deferToThread(talk, target, b"abc") == b"cba"
        assert closed == [False]  # the answer came later, and closed the connection then
        await until(lambda: not factory.connections)
        assert (factory.metrics.answers, factory.metrics.abandoned) == (1, 0)
    finally:
        await port.stopListening()

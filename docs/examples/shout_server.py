"""A server of your own: one handler served over frames, half-close and datagrams.

Run it, then talk to it with ``shout_client.py`` or the ``sockproto`` command::

    $ python shout_server.py                 # frame 8760, half-close 8762, datagram 8761/udp
    $ sockproto frame 127.0.0.1:8760 --data hello
    HELLO!

Stop it with Ctrl-C or SIGTERM.  ``python shout_server.py 0 0 0`` picks free ports and
prints them.
"""

from __future__ import annotations

import sys

from twisted.internet import defer, task
from twisted.internet.endpoints import serverFromString

from sockproto import (
    DatagramServerFactory,
    FrameServerFactory,
    HalfCloseServerFactory,
    Request,
    udp_server_from_string,
)


async def shout(request: Request) -> bytes:
    """The handler: the payload in upper case, with an exclamation mark.

    A coroutine, so it could ``await`` a database or another service; an exception
    becomes ERROR 4 (frame and datagram) or a reset (half-close), and is logged.
    """
    if not request.payload:
        raise ValueError("nothing to shout")
    return request.payload.upper() + b"!"


async def main(reactor, frame_port="8760", datagram_port="8761", halfclose_port="8762"):
    frame = await serverFromString(reactor, f"tcp:{frame_port}:interface=127.0.0.1").listen(
        FrameServerFactory(shout)
    )
    halfclose = await serverFromString(reactor, f"tcp:{halfclose_port}:interface=127.0.0.1").listen(
        HalfCloseServerFactory(shout)
    )
    datagram = await udp_server_from_string(reactor, f"udp:{datagram_port}:interface=127.0.0.1").listen(
        DatagramServerFactory(shout)
    )
    ports = {"frame": frame, "datagram": datagram, "halfclose": halfclose}
    print(" ".join(f"{name}={port.getHost().port}" for name, port in ports.items()), flush=True)
    await defer.Deferred()  # serve until the reactor stops (Ctrl-C, SIGTERM)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, *sys.argv[1:])))

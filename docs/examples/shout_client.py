"""A client: one request to each service of ``shout_server.py``.

$ python shout_client.py                       # the server's default ports
$ python shout_client.py 8760 8761 8762
"""

from __future__ import annotations

import sys

from twisted.internet import defer, task

from sockproto import RemoteError, connect_datagram, connect_frame, halfclose_request


async def main(reactor, frame_port="8760", datagram_port="8761", halfclose_port="8762"):
    # Frame service: one connection, many requests, answers matched by id.
    client = await connect_frame(f"tcp:host=127.0.0.1:port={frame_port}")
    answers = await defer.gatherResults([client.request(b"hello"), client.request(b"frames")])
    print("frame:", b" ".join(answers).decode())
    try:
        await client.request(b"")  # the handler refuses an empty request
    except RemoteError as e:
        print(f"frame: refused with ERROR {e.code}: {e.message}")
    await client.close()

    # Datagram service: a connected UDP socket, retransmitting until answered.
    udp = await connect_datagram(f"udp:host=127.0.0.1:port={datagram_port}")
    print("datagram:", (await udp.request(b"hello datagrams", timeout=5)).decode())
    await udp.close()

    # Half-close service: one connection per request; the answer ends at the server's FIN.
    answer = await halfclose_request(f"tcp:host=127.0.0.1:port={halfclose_port}", b"hello half-close")
    print("halfclose:", answer.decode())


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, *sys.argv[1:])))

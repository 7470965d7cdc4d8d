"""The handler the deployment tests run: the peer the server sees, and which instance saw it.

``whoami`` answers ``HOST:PORT NAME\\n``: the built-in ``peer`` handler's answer (the
client the PROXY header names) and the instance's name, from the environment variable
``SOCKPROTO_INSTANCE``, so a test can tell the instances behind the balancer apart.
This directory alone is put on the instances' PYTHONPATH.
"""

from __future__ import annotations

import os

from sockproto.handlers import peer
from sockproto.request import Request


def whoami(request: Request) -> bytes:
    name = os.environ.get("SOCKPROTO_INSTANCE", "?").encode()
    return peer(request).rstrip(b"\n") + b" " + name + b"\n"

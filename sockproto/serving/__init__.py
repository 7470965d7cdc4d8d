"""The serving machinery shared by the three services: the Twisted layer over :mod:`sockproto.core`.

One module per rule, between the sans-IO core and the services (``frame``,
``datagram``, ``halfclose``):

- :mod:`~sockproto.serving.settings`: the frozen settings each factory gives its protocols;
- :mod:`~sockproto.serving.answering`: the handler lifecycle (call, time out, count, log);
- :mod:`~sockproto.serving.stream`: the stream factories' and protocols' common base;
- :mod:`~sockproto.serving.connections`: open connections, counted, limited, drained;
- :mod:`~sockproto.serving.timers`: one reactor call for every connection's timeout;
- :mod:`~sockproto.serving.writing`: answers sent at once when the socket takes them;
- :mod:`~sockproto.serving.threads`: handlers run in a thread pool;
- :mod:`~sockproto.serving.streaming`: streaming handlers (the body in chunks, with backpressure);
- :mod:`~sockproto.serving.logs`, :mod:`~sockproto.serving.metrics`,
  :mod:`~sockproto.serving.prometheus`: what a service says about itself;
- :mod:`~sockproto.serving.service`: a twistd service with a graceful stop.
"""

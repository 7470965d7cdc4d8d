"""The ``sockproto`` client command: one request to any sockproto service, or a load test.

See :mod:`sockproto.cli.main` for the synopsis and :doc:`/cli` for the guide.
"""

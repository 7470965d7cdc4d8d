"""``python -m sockproto``: the same as the ``sockproto`` command."""

from sockproto.cli.main import main

if __name__ == "__main__":
    main()

"""Command-line options shared by every sockproto twistd plugin."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from ..core.units import parse_duration, parse_size
from ..handlers import BUILTINS, resolve_handler

__all__ = ["ServiceOptions", "parse_count", "parse_duration", "parse_size"]

T = TypeVar("T")


def parse_count(text: str) -> int:
    """Parse a positive whole number.

    :raises ValueError: with a message saying what is accepted.
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {text!r}")
    return value


class ServiceOptions(usage.Options):
    """``--listen`` (repeatable) and ``--handler``, plus option checking that names the option.

    Subclasses set :attr:`default_listen`, add ``optParameters``, and call
    :meth:`convert` in ``postOptions`` for each option that needs parsing.
    """

    default_listen: ClassVar[str] = ""
    optParameters: ClassVar[list[list[Any]]] = [
        [
            "handler",
            None,
            "echo",
            f"the request handler: {' or '.join(sorted(BUILTINS))}, or module:callable",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Listen on ENDPOINT, a Twisted server endpoint string (repeatable)."""
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [self.default_listen]
        self["endpoints"] = [(text, self.server_endpoint(text)) for text in self["listen"]]
        self.convert("handler", resolve_handler)

    def server_endpoint(self, text: str) -> Any:
        """Parse one ``--listen`` value (nothing is bound yet)."""
        try:
            return serverFromString(reactor, text)
        except Exception as e:  # Twisted raises ValueError, KeyError, TypeError...
            hint = " (escape the colons of an IPv6 address: \\:)" if "::" in text.replace("\\:", "") else ""
            raise usage.UsageError(f"--listen {text!r}: {e or type(e).__name__}{hint}") from e

    def convert(self, name: str, parse: Callable[[str], T]) -> T:
        """Replace option ``name``'s text by ``parse(text)``; a ValueError names the option."""
        try:
            value = parse(self[name]) if isinstance(self[name], str) else self[name]
        except ValueError as e:
            raise usage.UsageError(f"--{name}: {e}") from e
        self[name] = value
        return value

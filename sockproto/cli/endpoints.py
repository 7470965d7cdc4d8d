"""Where the client command connects: Twisted client strings, ``udp:`` strings, ``HOST:PORT``.

Three spellings are accepted:

- any Twisted client endpoint string: ``tcp:host=H:port=P``, ``unix:path=P``,
  ``tls:host=H:port=P``, ``ssl:...``, or one of an installed endpoint plugin;
- sockproto's ``udp:host=H:port=P`` (:mod:`sockproto.datagram.endpoints`);
- the shorthand ``HOST:PORT`` or ``[IPv6]:PORT``: UDP for the datagram service, TCP
  otherwise.  A TCP shorthand uses :class:`~twisted.internet.endpoints.HostnameEndpoint`,
  which resolves a name to its IPv4 *and* IPv6 addresses and tries them all, whereas
  Twisted's ``tcp:`` client string resolves names to IPv4 only (twisted#7387).

Parsing never connects: a bad endpoint is a usage error, found before the reactor runs.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Final

from twisted.internet.endpoints import HostnameEndpoint, clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamClientEndpointStringParserWithReactor
from twisted.plugin import getPlugins

from ..core.proxy_encode import encode_v2
from ..datagram.endpoints import UDPClientEndpoint, udp_client_from_string

__all__ = ["Target", "client_endpoint", "proxy_v2_header", "split_shorthand"]

_BRACKETED: Final = re.compile(r"\[([^\[\]]+)\]:([0-9]+)\Z")
_PLAIN: Final = re.compile(r"([^:\[\]\s]+):([0-9]+)\Z")
_BUILTIN_SCHEMES: Final = frozenset(("tcp", "ssl", "unix", "udp"))
_EXPECTED: Final = (
    "expected HOST:PORT, [IPv6]:PORT, or an endpoint string such as "
    "tcp:host=HOST:port=PORT, unix:path=PATH, tls:host=HOST:port=PORT, udp:host=HOST:port=PORT"
)


def _is_scheme(name: str) -> bool:
    """Whether ``name`` is the type of a Twisted (or sockproto ``udp:``) client endpoint string."""
    name = name.lower()
    if name in _BUILTIN_SCHEMES:
        return True
    plugins = getPlugins(IStreamClientEndpointStringParserWithReactor)
    return any(str(plugin.prefix).lower() == name for plugin in plugins)


def _port(text: str, port: str) -> int:
    value = int(port)
    if not 1 <= value <= 65535:
        raise ValueError(f"{text!r}: port {port} is not between 1 and 65535")
    return value


def split_shorthand(text: str) -> tuple[str, int] | None:
    """Return ``(host, port)`` for ``HOST:PORT`` or ``[IPv6]:PORT``; ``None`` for anything else.

    ``tcp:8750`` and the like are endpoint strings, not a host named ``tcp``.

    :raises ValueError: for a shorthand with a bad port or a bracketed non-IPv6 host.
    """
    match = _BRACKETED.match(text)
    if match is not None:
        host = match.group(1)
        try:
            ipaddress.IPv6Address(host.partition("%")[0])
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} in brackets is not an IPv6 address") from None
        return host, _port(text, match.group(2))
    match = _PLAIN.match(text)
    if match is None or _is_scheme(match.group(1)):
        return None
    return match.group(1), _port(text, match.group(2))


@dataclass(frozen=True)
class Target:
    """A parsed ENDPOINT argument.

    :ivar text: the argument as given (for messages).
    :ivar endpoint: a stream client endpoint, or a :class:`UDPClientEndpoint`.
    """

    text: str
    endpoint: IStreamClientEndpoint | UDPClientEndpoint

    @property
    def is_datagram(self) -> bool:
        """Whether this is a UDP endpoint (for the datagram service)."""
        return isinstance(self.endpoint, UDPClientEndpoint)


def client_endpoint(reactor: Any, text: str, *, datagram: bool, timeout: float) -> Target:
    """Parse ENDPOINT; nothing is connected yet.

    :param datagram: the shorthand means UDP (``True``) or TCP (``False``).
    :param timeout: seconds a TCP connection attempt may take (for the shorthand).
    :raises ValueError: with a one-line message saying what is wrong.
    """
    text = text.strip()
    scheme = text.partition(":")[0].lower()
    if scheme == "udp":
        return Target(text, udp_client_from_string(reactor, text))
    shorthand = split_shorthand(text)
    if shorthand is not None:
        host, port = shorthand
        if datagram:
            return Target(text, UDPClientEndpoint(reactor, host, port))
        return Target(text, HostnameEndpoint(reactor, host, port, timeout=timeout))
    head, _, tail = text.rpartition(":")
    if head and tail.isdigit() and _is_ipv6(head):
        raise ValueError(f"{text!r}: write an IPv6 address in brackets: [{head}]:{tail}")
    if not scheme or scheme == text.lower():
        raise ValueError(f"{text!r}: {_EXPECTED}")
    if "::" in text.replace("\\:", ""):  # Twisted would split an unescaped IPv6 address silently
        raise ValueError(f"{text!r}: escape the colons of an IPv6 address (\\:), or use [IPv6]:PORT")
    try:
        endpoint = clientFromString(reactor, text)
    except Exception as e:  # Twisted raises ValueError, KeyError, TypeError...
        detail = str(e) or type(e).__name__
        if "Unknown endpoint type" in detail:
            detail = f"unknown endpoint type {scheme!r}; {_EXPECTED}"
        raise ValueError(f"{text!r}: {detail}") from e
    return Target(text, endpoint)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text.partition("%")[0])
    except ValueError:
        return False
    return True


def proxy_v2_header(source: str, target: str) -> bytes:
    """The PROXY v2 header ``--proxy-v2 SRC:PORT`` sends first, naming ``source`` as the client.

    The destination is the target's address when the target is an IP ``HOST:PORT`` of
    the source's family, else the unspecified address of that family (and the
    target's port, if it has one): a sockproto server reads only the source.

    :raises ValueError: if ``source`` is not ``IPv4:PORT`` or ``[IPv6]:PORT``.
    """
    parsed = split_shorthand(source.strip())
    try:
        host = ipaddress.ip_address(parsed[0]) if parsed is not None else None
    except ValueError:
        host = None
    if parsed is None or host is None:
        raise ValueError(f"--proxy-v2 {source!r}: expected the client's IPv4:PORT or [IPv6]:PORT")
    try:
        aimed = split_shorthand(target.strip())
    except ValueError:
        aimed = None
    destination = (str(ipaddress.ip_address(0 if host.version == 4 else "::")), aimed[1] if aimed else 0)
    if aimed is not None:
        try:
            if ipaddress.ip_address(aimed[0]).version == host.version:
                destination = aimed
        except ValueError:
            pass
    return encode_v2((str(host), parsed[1]), destination)

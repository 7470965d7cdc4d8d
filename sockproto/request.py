"""The request a handler receives, shared by the frame, datagram and half-close services."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, ClassVar

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress

from .core.decoder import Frame
from .core.header import FieldValue, HeaderSpec

if TYPE_CHECKING:
    from .serving.tls import PeerCertificate

__all__ = ["Request", "normalize_peer"]


class Request(Frame):
    """What a handler is called with.

    :ivar payload: the request bytes.
    :ivar peer: the client's address (:class:`~twisted.internet.address.IPv4Address`,
        :class:`~twisted.internet.address.IPv6Address`, a UNIX address...).  An
        IPv4-mapped IPv6 peer such as ``::ffff:127.0.0.1`` appears as plain IPv4.
    :ivar id: the request id, or ``None`` if the wire format has none.
    :ivar kind: the header's kind field, or ``None``.
    :ivar header: the raw header values in wire order (empty without a header).
    :ivar fields: the decoded header fields by name (empty without a header).
    :ivar peer_certificate: the verified client certificate of a TLS connection (a
        :class:`~sockproto.serving.tls.PeerCertificate`), ``None`` without TLS or
        without one.  A class attribute: the requests of a TLS connection are of a
        subclass (:func:`~sockproto.serving.tls.request_type`), so no request pays for it.
    """

    __slots__ = ("peer",)
    peer: IAddress | None
    peer_certificate: ClassVar[PeerCertificate | None] = None

    #: Like :class:`~sockproto.core.decoder.Frame`, the decoder builds requests
    #: without calling ``__init__``: the service sets ``peer`` before any handler runs.
    decoder_skips_init = True

    def __init__(
        self,
        kind: int | None,
        id: int | None,
        payload: bytes,
        header: tuple[FieldValue, ...],
        spec: HeaderSpec | None,
        peer: IAddress | None = None,
    ) -> None:
        self.kind = kind
        self.id = id
        self.payload = payload
        self.header = header
        self.spec = spec
        self.peer = peer

    @classmethod
    def bare(cls, payload: bytes, peer: IAddress | None, id: int | None = None) -> Request:
        """Build a request that came without a header (raw datagram, half-close)."""
        return cls(None, id, payload, (), None, peer)


def normalize_peer(address: IAddress) -> IAddress:
    """Present an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) as plain IPv4.

    A dual-stack socket reports IPv4 clients that way; handlers should not have to
    know.  Any other address is returned unchanged.
    """
    if isinstance(address, IPv6Address):
        try:
            mapped = ipaddress.IPv6Address(address.host.partition("%")[0]).ipv4_mapped
        except ValueError:
            return address
        if mapped is not None:
            return IPv4Address(address.type, str(mapped), address.port)
    return address

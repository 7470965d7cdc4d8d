"""Mutual TLS for the stream services: the ``mtls:`` server endpoint and the peer's identity.

``mtls:PORT:privateKey=KEY:certKey=CERT:caCerts=CA[:interface=...][:backlog=N]`` is
Twisted's ``ssl:`` server endpoint that also *requires* a client certificate signed by
one of the CAs in the PEM file ``caCerts``: a client without one, with one from another
CA, or with one expired or not yet valid, fails the handshake before any byte reaches the
service (the server logs why, rate-limited).  It is an endpoint string parser plugin
(:class:`~twisted.internet.interfaces.IStreamServerEndpointStringParser`), so it works
with ``--listen`` of every sockproto service, and of any Twisted program that takes
endpoint strings (``twistd web --listen mtls:...``).

Clients need nothing new: Twisted's ``tls:`` client string presents a certificate
(``certificate=``, ``privateKey=``) and verifies the server against CAs
(``trustRoots=DIR``) and the host name (``host=``, or ``endpoint=`` to connect elsewhere).

A handler sees the verified client's certificate as ``request.peer_certificate``, a
:class:`PeerCertificate`, or ``None`` without TLS.  It costs nothing per request: the
requests of a TLS connection are built as a subclass of
:class:`~sockproto.request.Request` whose class attribute holds the certificate
(:func:`request_type`, one class per distinct certificate, cached).

pyOpenSSL (``sockproto[tls]``) is imported only when a TLS endpoint or connection is used.
"""

from __future__ import annotations

import datetime
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast
from weakref import WeakKeyDictionary

from twisted.internet.interfaces import (
    ISSLTransport,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from ..request import Request

if TYPE_CHECKING:
    from cryptography import x509
    from twisted.internet.ssl import CertificateOptions

__all__ = [
    "MutualTLSServerParser",
    "PeerCertificate",
    "mutual_tls_options",
    "peer_certificate",
    "request_type",
    "tls_client_error",
    "tls_refusal",
]

R = TypeVar("R", bound=Request)

# what a client is told, by OpenSSL's reason: why the server ended the handshake
_CLIENT_HINTS: Final = (
    ("certificate required", "the server requires a client certificate"),
    ("unknown ca", "the server does not trust the CA of the client certificate"),
    ("certificate expired", "the server refused the client certificate: it has expired"),
    ("bad certificate", "the server refused the client certificate"),
    ("certificate verify failed", "the server's certificate is not signed by a CA trusted here"),
)

# X509_V_ERR_* codes (OpenSSL's x509_vfy.h) a refused client certificate usually has
_VERIFY_ERRORS: Final = {
    2: "unable to get issuer certificate",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate (signed by a CA not trusted here)",
    21: "unable to verify the first certificate",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
    28: "certificate rejected",
}


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """The verified certificate a TLS client presented (what a handler may authorize on).

    :ivar subject: the subject as an RFC 4514 string, e.g. ``"CN=alice,O=Example"``.
    :ivar common_name: the subject's first common name (CN), or ``None``.
    :ivar issuer: the issuer as an RFC 4514 string.
    :ivar serial_number: the certificate's serial number.
    :ivar fingerprint_sha256: the SHA-256 of the DER certificate, lower-case hex.
    :ivar not_valid_after: when the certificate expires (UTC).
    """

    subject: str
    common_name: str | None
    issuer: str
    serial_number: int
    fingerprint_sha256: str
    not_valid_after: datetime.datetime

    @classmethod
    def from_cryptography(cls, cert: x509.Certificate) -> PeerCertificate:
        """Describe a :class:`cryptography.x509.Certificate`."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID

        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return cls(
            subject=cert.subject.rfc4514_string(),
            common_name=str(names[0].value) if names else None,
            issuer=cert.issuer.rfc4514_string(),
            serial_number=cert.serial_number,
            fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
            not_valid_after=cert.not_valid_after_utc,
        )


def peer_certificate(transport: object) -> PeerCertificate | None:
    """The certificate the peer of ``transport`` presented, or ``None`` (no TLS, no certificate).

    On a server requiring one (``mtls:``), a connection whose handshake completed has a
    verified certificate.
    """
    if not ISSLTransport.providedBy(transport):
        return None
    x509_cert: Any = transport.getPeerCertificate()
    if x509_cert is None:
        return None
    return PeerCertificate.from_cryptography(x509_cert.to_cryptography())


def request_type(transport: object, base: type[R] = Request) -> type[R]:  # type: ignore[assignment]
    """The class to build the requests of ``transport``'s connection with.

    :class:`~sockproto.request.Request` itself (``peer_certificate`` is ``None``) unless
    the connection is TLS with a client certificate: then a subclass whose
    ``peer_certificate`` is that certificate.  ``base``: the class to start from (a
    streaming handler's :class:`~sockproto.serving.streaming.StreamingRequest`).  Call
    it once the handshake is done (at the first bytes received: TLS delivers none before).
    """
    cert = peer_certificate(transport)
    return base if cert is None else cast("type[R]", _certified_request(cert, cast("type", base)))


@functools.lru_cache(maxsize=1024)
def _certified_request(cert: PeerCertificate, base: type) -> type:
    """One subclass of ``base`` per certificate (a client reconnecting reuses it)."""
    return type(
        base.__name__, (base,), {"__slots__": (), "peer_certificate": cert, "__module__": base.__module__}
    )


def tls_refusal(transport: object, reason: Failure) -> str | None:
    """Why the TLS handshake on ``transport`` failed, in one line; ``None`` if it did not.

    For the server's log: OpenSSL's reason (``peer did not return a certificate``,
    ``certificate verify failed``...) with the verification error and the subject of a
    refused certificate.
    """
    if not ISSLTransport.providedBy(transport):
        return None
    from OpenSSL import SSL

    if not isinstance(reason.value, SSL.Error):
        return None
    errors = reason.value.args[0] if reason.value.args else []
    why = "; ".join(str(e[-1]) for e in errors if isinstance(e, tuple)) or str(reason.value)
    handle = transport.getHandle()  # type: ignore[attr-defined]  # the SSL.Connection
    refused = _refused.get(handle) if isinstance(handle, SSL.Connection) else None
    if refused is not None:
        code, subject = refused
        detail = _VERIFY_ERRORS.get(code, f"X509 verify error {code}")
        return f"client certificate {subject!r} refused: {detail} ({why})"
    if "did not return a certificate" in why:
        return f"the client sent no certificate ({why})"
    if "alert" in why:  # one the client sent
        return f"the client ended the handshake ({why}): does it trust this server's CA and name?"
    return why


def tls_client_error(error: BaseException) -> str | None:
    """What a TLS failure on the client side means, in one line; ``None`` if ``error`` is not one.

    For ``sockproto`` and other clients: OpenSSL's reason with what it usually means,
    or the host name the server's certificate does not match.
    """
    module = type(error).__module__
    if module.startswith("service_identity"):
        mismatched = [str(getattr(e, "mismatched_id", e)) for e in getattr(error, "errors", ())]
        return f"the server's certificate does not match the host name: {', '.join(mismatched) or error}"
    if not module.startswith("OpenSSL"):
        return None
    errors = error.args[0] if error.args and isinstance(error.args[0], list) else []
    why = "; ".join(str(e[-1]) for e in errors if isinstance(e, tuple)) or str(error)
    for needle, meaning in _CLIENT_HINTS:
        if needle in why:
            return f"{meaning} ({why})"
    return why


_refused: WeakKeyDictionary[Any, tuple[int, str]] = WeakKeyDictionary()
"""The TLS connections whose client certificate failed verification: (X509 error, subject)."""


def _verified(connection: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
    """OpenSSL's verify callback: keep OpenSSL's verdict, note why a certificate failed."""
    if not ok and connection not in _refused:
        _refused[connection] = (errno, cert.to_cryptography().subject.rfc4514_string())
    return bool(ok)


def _mutual_tls_options_class() -> type[CertificateOptions]:
    from twisted.internet.ssl import CertificateOptions

    class MutualTLSOptions(CertificateOptions):
        """``CertificateOptions`` whose verification notes why a client certificate failed."""

        def getContext(self) -> Any:  # Twisted's name
            if self._context is None:
                context = super().getContext()
                context.set_verify(context.get_verify_mode(), _verified)
            return self._context

    return MutualTLSOptions


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read the {what} {path!r}: {e.strerror or e}") from None


def _certificates(path: str, what: str) -> list[Any]:
    """The OpenSSL certificates of a PEM file (one or more)."""
    from cryptography import x509
    from OpenSSL import crypto

    try:
        certs = x509.load_pem_x509_certificates(_read(path, what))
    except ValueError as e:
        raise ValueError(f"the {what} {path!r} holds no PEM certificate ({e})") from None
    return [crypto.X509.from_cryptography(c) for c in certs]


def mutual_tls_options(
    private_key: str, certificate: str | None, ca_certs: str, extra_chain: str | None = None
) -> CertificateOptions:
    """Server TLS options that require a client certificate signed by a CA of ``ca_certs``.

    :param private_key: the server's PEM private key (the certificate may follow it).
    :param certificate: the server's PEM certificate; ``None``: read from ``private_key``.
    :param ca_certs: a PEM file of the CA certificates client certificates must chain to.
    :param extra_chain: PEM intermediate certificates sent after the server's.
    :raises ValueError: a file is missing or holds no key or certificate.
    """
    from OpenSSL import SSL, crypto

    key_pem = _read(private_key, "private key")
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    except crypto.Error:
        raise ValueError(f"the private key {private_key!r} holds no PEM private key") from None
    cert = _certificates(certificate or private_key, "certificate")[0]
    options = _mutual_tls_options_class()(
        privateKey=key,
        certificate=cert,
        extraCertChain=_certificates(extra_chain, "certificate chain") if extra_chain else None,
        verify=True,
        caCerts=_certificates(ca_certs, "CA certificates"),
        requireCertificate=True,
    )
    try:
        options.getContext()  # the key must match the certificate: fail now, not per connection
    except SSL.Error as e:
        raise ValueError(f"the private key {private_key!r} does not match the certificate: {e}") from None
    return options


@implementer(IPlugin, IStreamServerEndpointStringParser)
class MutualTLSServerParser:
    """The ``mtls:`` server endpoint string: ``ssl:`` that requires a client certificate.

    ``mtls:PORT:privateKey=KEY:caCerts=CA[:certKey=CERT][:extraCertChain=PEM]
    [:interface=ADDR][:backlog=N]``; ``certKey`` defaults to ``privateKey`` (key and
    certificate in one file).  Every file is read when the string is parsed.
    """

    prefix = "mtls"

    def parseStreamServer(self, reactor: Any, *args: object, **kwargs: object) -> IStreamServerEndpoint:
        """Build the endpoint from the string's arguments (nothing listens yet)."""
        return _mtls_endpoint(reactor, *args, **kwargs)  # type: ignore[arg-type]


def _mtls_endpoint(
    reactor: Any,
    port: str,
    privateKey: str | None = None,  # the names of Twisted's ssl: string
    caCerts: str | None = None,
    certKey: str | None = None,
    extraCertChain: str | None = None,
    interface: str = "",
    backlog: str = "50",
) -> IStreamServerEndpoint:
    """The ``mtls:`` endpoint for the string's arguments."""
    from twisted.internet.endpoints import SSL4ServerEndpoint

    if privateKey is None or caCerts is None:
        raise ValueError(
            "mtls: needs privateKey=KEY.pem and caCerts=CA.pem "
            "(the server's key, and the CA that signs client certificates)"
        )
    options = mutual_tls_options(privateKey, certKey, caCerts, extraCertChain)
    return SSL4ServerEndpoint(reactor, int(port), options, backlog=int(backlog), interface=interface)

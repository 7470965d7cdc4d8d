"""sockproto.serving.tls: the ``mtls:`` endpoint string, the peer's certificate, TLS failure messages."""

from __future__ import annotations

import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.hazmat import DNS_ID, DNSMismatch
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from sockproto.frame.protocol import FrameServerProtocol
from sockproto.request import Request
from sockproto.serving.tls import (
    MutualTLSServerParser,
    PeerCertificate,
    peer_certificate,
    request_type,
    tls_client_error,
    tls_refusal,
)
from sockproto.tap import halfclose

from ..loopback.tls import Pki, escape, make_pki


@implementer(ISSLTransport)
class TLSTransport(StringTransport):
    """A transport that says it is TLS, with the peer certificate given."""

    def __init__(self, cert: Path | None) -> None:
        super().__init__()
        self.cert = (
            None
            if cert is None
            else crypto.X509.from_cryptography(x509.load_pem_x509_certificate(cert.read_bytes()))
        )

    def getPeerCertificate(self) -> Any:
        return self.cert

    def getHandle(self) -> object:
        return object()


def whoami(request: Request) -> bytes:
    cert = request.peer_certificate
    return b"none" if cert is None else cert.subject.encode()


def ssl_error(reason: str) -> SSL.Error:
    return SSL.Error([("SSL routines", "", reason)])


class MutualTLSEndpointTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="sockproto-tls-"))
        self.addCleanup(shutil.rmtree, directory)
        self.pki: Pki = make_pki(directory)

    def parse(self, text: str) -> Any:
        return serverFromString(MemoryReactor(), text)

    def test_plugin_parses_mtls_strings_into_a_verifying_ssl_endpoint(self) -> None:
        reactor = MemoryReactor()
        endpoint = serverFromString(reactor, self.pki.listen(8443, "::1"))
        self.assertIsInstance(endpoint, SSL4ServerEndpoint)
        endpoint.listen(Factory())
        port, _, options, backlog, interface = reactor.sslServers[0]
        self.assertEqual((port, backlog, interface), (8443, 50, "::1"))
        self.assertTrue(options.verify)
        self.assertTrue(options.requireCertificate)
        mode = options.getContext().get_verify_mode()
        self.assertEqual(mode & SSL.VERIFY_FAIL_IF_NO_PEER_CERT, SSL.VERIFY_FAIL_IF_NO_PEER_CERT)

    def test_key_and_certificate_in_one_file(self) -> None:
        both = self.pki.directory / "both.pem"
        both.write_bytes(self.pki.key("server").read_bytes() + self.pki.cert("server").read_bytes())
        endpoint = self.parse(f"mtls:0:privateKey={escape(str(both))}:caCerts={escape(str(self.pki.ca))}")
        self.assertIsInstance(endpoint, SSL4ServerEndpoint)

    def test_missing_arguments_and_files_are_named(self) -> None:
        ca, key = escape(str(self.pki.ca)), escape(str(self.pki.key("server")))
        with self.assertRaisesRegex(ValueError, "needs privateKey=KEY.pem and caCerts=CA.pem"):
            self.parse(f"mtls:0:privateKey={key}")
        with self.assertRaisesRegex(ValueError, "cannot read the CA certificates '/no/ca.pem'"):
            self.parse(
                f"mtls:0:privateKey={key}:certKey={escape(str(self.pki.cert('server')))}:caCerts=/no/ca.pem"
            )
        with self.assertRaisesRegex(ValueError, "holds no PEM certificate"):
            self.parse(f"mtls:0:privateKey={key}:caCerts={ca}")  # the key file has no certificate
        with self.assertRaisesRegex(ValueError, "holds no PEM private key"):
            self.parse(f"mtls:0:privateKey={ca}:caCerts={ca}")

    def test_key_not_matching_the_certificate_is_refused_when_parsed(self) -> None:
        text = (
            f"mtls:0:privateKey={escape(str(self.pki.key('alice')))}"
            f":certKey={escape(str(self.pki.cert('server')))}:caCerts={escape(str(self.pki.ca))}"
        )
        with self.assertRaisesRegex(ValueError, "does not match the certificate"):
            self.parse(text)

    def test_parser_provides_the_twisted_interface(self) -> None:
        self.assertEqual(MutualTLSServerParser.prefix, "mtls")

    def test_halfclose_refuses_mtls(self) -> None:
        options = halfclose.Options()
        with self.assertRaisesRegex(usage.UsageError, "TLS endpoints cannot serve half-close"):
            options.parseOptions(["--listen", self.pki.listen()])


class PeerCertificateTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="sockproto-tls-"))
        self.addCleanup(shutil.rmtree, directory)
        self.pki = make_pki(directory)

    def test_describes_the_certificate(self) -> None:
        cert = peer_certificate(TLSTransport(self.pki.cert("alice")))
        assert cert is not None
        self.assertEqual(cert.subject, "CN=alice,O=sockproto tests")
        self.assertEqual(cert.common_name, "alice")
        self.assertEqual(cert.issuer, "CN=sockproto test CA,O=sockproto tests")
        self.assertEqual(len(cert.fingerprint_sha256), 64)
        self.assertIsNotNone(cert.not_valid_after.tzinfo)
        self.assertEqual(hash(cert), hash(peer_certificate(TLSTransport(self.pki.cert("alice")))))

    def test_no_tls_or_no_certificate_is_none(self) -> None:
        self.assertIsNone(peer_certificate(StringTransport()))
        self.assertIsNone(peer_certificate(TLSTransport(None)))
        self.assertIs(request_type(StringTransport()), Request)
        self.assertIs(request_type(TLSTransport(None)), Request)
        self.assertIsNone(Request.bare(b"x", None).peer_certificate)

    def test_requests_of_a_tls_connection_carry_it_at_no_per_request_cost(self) -> None:
        kind = request_type(TLSTransport(self.pki.cert("alice")))
        self.assertTrue(issubclass(kind, Request))
        self.assertIs(kind, request_type(TLSTransport(self.pki.cert("alice"))))  # one class per certificate
        self.assertIsNot(kind, request_type(TLSTransport(self.pki.cert("expired"))))
        self.assertEqual(kind.__slots__, ())
        request = kind.__new__(kind)
        self.assertFalse(hasattr(request, "__dict__"))
        assert isinstance(request.peer_certificate, PeerCertificate)
        self.assertEqual(request.peer_certificate.common_name, "alice")

    def test_the_frame_protocol_gives_the_handler_the_certificate(self) -> None:
        frame = struct.pack(">2sBBII", b"SP", 1, 1, 1, 1) + b"x"
        for cert, subject in ((self.pki.cert("alice"), b"CN=alice,O=sockproto tests"), (None, b"none")):
            transport = TLSTransport(cert)
            proto = FrameServerProtocol(whoami)
            proto.makeConnection(transport)
            proto.dataReceived(frame)
            self.assertEqual(transport.value()[12:], subject)
        plain = StringTransport()
        proto = FrameServerProtocol(whoami)
        proto.makeConnection(plain)
        proto.dataReceived(frame)
        self.assertEqual(plain.value()[12:], b"none")


class FailureMessageTests(SynchronousTestCase):
    def test_server_side(self) -> None:
        tls = TLSTransport(None)
        self.assertIsNone(
            tls_refusal(StringTransport(), Failure(ssl_error("peer did not return a certificate")))
        )
        self.assertIsNone(tls_refusal(tls, Failure(ConnectionDone())))
        self.assertIsNone(tls_refusal(tls, Failure(ConnectionLost())))
        self.assertEqual(
            tls_refusal(tls, Failure(ssl_error("peer did not return a certificate"))),
            "the client sent no certificate (peer did not return a certificate)",
        )
        why = tls_refusal(tls, Failure(ssl_error("tlsv1 alert unknown ca")))
        assert why is not None
        self.assertIn("the client ended the handshake (tlsv1 alert unknown ca)", why)

    def test_client_side(self) -> None:
        cases = {
            "tlsv13 alert certificate required": "the server requires a client certificate",
            "tlsv1 alert unknown ca": "the server does not trust the CA of the client certificate",
            "tls alert certificate expired": "the server refused the client certificate: it has expired",
            "certificate verify failed": "the server's certificate is not signed by a CA trusted here",
            "wrong version number": "wrong version number",
        }
        for reason, meaning in cases.items():
            message = tls_client_error(ssl_error(reason))
            assert message is not None
            self.assertTrue(message.startswith(meaning), message)
        mismatch = VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID("wrong.example"))])
        message = tls_client_error(mismatch)
        assert message is not None
        self.assertIn("does not match the host name", message)
        self.assertIn("wrong.example", message)
        self.assertIsNone(tls_client_error(ConnectionDone()))

"""Throwaway certificates for TLS loopback tests: a self-signed one, and a small PKI for mTLS."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_certificate(directory: Path) -> tuple[Path, bytes]:
    """Write ``server.pem`` (key + certificate for localhost/127.0.0.1); return it and the cert PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = directory / "server.pem"
    path.write_bytes(key_pem + cert_pem)
    return path, cert_pem


# -- a small PKI for mutual TLS: a CA, its server and clients, and a stranger's CA ----------

Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Pki:
    """The files :func:`make_pki` wrote (PEM): keys and certificates apart, as most tools want.

    :ivar ca: the CA certificate clients must chain to (``caCerts=`` of ``mtls:``).
    :ivar ca_dir: a directory holding only ``ca.pem`` (``trustRoots=`` of Twisted's ``tls:``).
    """

    directory: Path
    ca: Path
    ca_dir: Path

    def key(self, name: str) -> Path:
        """The private key of ``name`` (``server``, ``alice``, ``stranger``, ``expired``)."""
        return self.directory / f"{name}.key"

    def cert(self, name: str) -> Path:
        """The certificate of ``name``."""
        return self.directory / f"{name}.crt"

    def listen(self, port: int = 0, interface: str = "127.0.0.1") -> str:
        """An ``mtls:`` server endpoint string with the server's key and this CA."""
        return (
            f"mtls:{port}:interface={escape(interface)}:privateKey={escape(str(self.key('server')))}"
            f":certKey={escape(str(self.cert('server')))}:caCerts={escape(str(self.ca))}"
        )

    def client(self, port: int, name: str | None = "alice", host: str = "localhost") -> str:
        """A Twisted ``tls:`` client string: ``name``'s certificate (``None``: none), this CA,
        ``host`` checked against the server's certificate, connecting to 127.0.0.1."""
        text = f"tls:host={host}:port={port}:trustRoots={escape(str(self.ca_dir))}"
        if name is not None:
            text += f":certificate={escape(str(self.cert(name)))}:privateKey={escape(str(self.key(name)))}"
        return text + f":endpoint={escape(f'tcp:127.0.0.1:{port}')}"


def escape(text: str) -> str:
    """Escape ``text`` as one value of a Twisted endpoint string."""
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sockproto tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _issue(
    subject: str,
    key: Key,
    issuer: tuple[x509.Name, Key],
    *,
    ca: bool = False,
    server: bool = False,
    days: tuple[float, float] = (-1, 1),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0])
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        names: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer[1], hashes.SHA256())


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_pki(directory: Path) -> Pki:
    """Write a CA, a server (localhost, 127.0.0.1, ::1) and clients into ``directory``.

    Clients: ``alice`` (good), ``stranger`` (signed by another CA), ``expired`` (the
    right CA, expired yesterday).
    """
    ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("sockproto test CA", ca_key, (_name("sockproto test CA"), ca_key), ca=True, days=(-2, 2))
    other = (_name("another CA"), other_key)
    ca = (ca_cert.subject, ca_key)
    issued = {
        "server": (ca, {"server": True}),
        "alice": (ca, {}),
        "stranger": (other, {}),
        "expired": (ca, {"days": (-3.0, -1.0)}),
    }
    for name, (issuer, extra) in issued.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(name, key, issuer, **extra)  # type: ignore[arg-type]
        _write(directory / f"{name}.key", _pem(key))
        _write(directory / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM))
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    _write(directory / "ca.pem", ca_pem)
    ca_dir = directory / "ca"
    ca_dir.mkdir()
    _write(ca_dir / "ca.pem", ca_pem)
    return Pki(directory, directory / "ca.pem", ca_dir)

"""The fleet's keys and certificates: a small local CA (ECDSA P-256) and node key pairs.

Used for the broker's TLS listener and reusable for the SuperLink and the artifact server::

    ca = make_ca(Path("tls"))                                  # tls/ca.pem, tls/ca.key
    broker = issue(ca, "broker", ["mqtt.example.org", "10.0.0.5"], Path("tls"))
    broker.cert, broker.key                                    # tls/broker.pem, tls/broker.key

Keys are written 0600 (atomically: a crash never leaves half a key), certificates 0644.
Certificates carry what strict verifiers (OpenSSL's ``X509_V_FLAG_X509_STRICT``, which
Python 3.13 turns on by default) require: key usage on the CA, subject and authority key
identifiers, and SANs; hostname checks use only the SANs (RFC 6125 §6.4.4).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgeai.errors import ConfigError
from edgeai.plumbing.files import atomic_write

__all__ = ["CertFiles", "NodeKey", "TLSError", "generate_node_key", "issue", "load_ca", "make_ca"]

_CA_NAME = "ca"
# Clocks of small devices drift; a certificate valid from a little in the past still verifies.
_BACKDATE = dt.timedelta(hours=1)


class TLSError(ConfigError):
    """A certificate or key cannot be created or read; the message names the file."""


@dataclass(frozen=True)
class CertFiles:
    """A PEM certificate and its PEM private key on disk."""

    cert: Path
    key: Path


def make_ca(
    directory: Path,
    *,
    common_name: str = "edgeai fleet CA",
    days: int = 3650,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> CertFiles:
    """Create a self-signed CA (``ca.pem``, ``ca.key``) in ``directory``.

    Raises
    ------
    TLSError
        If the CA files exist already (re-creating a CA would orphan every issued
        certificate; delete them on purpose) or cannot be written.
    """
    files = CertFiles(directory / f"{_CA_NAME}.pem", directory / f"{_CA_NAME}.key")
    if files.cert.exists() or files.key.exists():
        raise TLSError(f"{files.cert}: a CA exists already; use load_ca() or remove it first")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = now() - _BACKDATE
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    _write(files, cert, key)
    return files


def load_ca(directory: Path) -> CertFiles:
    """The CA made by :func:`make_ca` in ``directory`` (checked to be readable)."""
    files = CertFiles(directory / f"{_CA_NAME}.pem", directory / f"{_CA_NAME}.key")
    _read(files)
    return files


def issue(
    ca: CertFiles,
    name: str,
    sans: Sequence[str],
    directory: Path,
    *,
    days: int = 825,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> CertFiles:
    """Issue a certificate for ``name`` (``<name>.pem``, ``<name>.key`` in ``directory``).

    ``sans`` are host names or IP addresses the certificate is valid for; the certificate
    serves as a TLS server and as a client certificate (mutual TLS).  An existing pair of
    the same name is replaced.

    Raises
    ------
    TLSError
        If ``sans`` is empty, the name is not a plain file name, or the CA is unreadable.
    """
    if not name or Path(name).name != name or name == _CA_NAME:
        raise TLSError(f"certificate name {name!r} must be a plain file name other than 'ca'")
    if not sans:
        raise TLSError(f"certificate {name!r} needs at least one host name or IP address")
    ca_cert, ca_key = _read(ca)
    key = ec.generate_private_key(ec.SECP256R1())
    start = now() - _BACKDATE
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(start + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([_san(s) for s in sans]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = CertFiles(directory / f"{name}.pem", directory / f"{name}.key")
    _write(files, cert, key)
    return files


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _san(value: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)


def _read(files: CertFiles) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise TLSError(f"cannot read the CA {files.cert} / {files.key}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TLSError(f"{files.key}: expected an EC private key, got {type(key).__name__}")
    return cert, key


def _write(files: CertFiles, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        files.key.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(files.key, key_pem, mode=0o600)
        atomic_write(files.cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    except OSError as exc:
        raise TLSError(f"cannot write {files.cert} / {files.key}: {exc}") from exc


# -- node identity (Flower node authentication) ---------------------------------------


@dataclass(frozen=True)
class NodeKey:
    """A node's key files: the private key stays on the device, the public key is enrolled."""

    private: Path
    public: Path


def generate_node_key(private_path: Path, comment: str = "edgeai-node") -> NodeKey:
    """Write a P-384 key pair: ``private_path`` (OpenSSH, 0600) and ``private_path.pub``."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    atomic_write(private_path, private, mode=0o600)
    public_path = private_path.with_name(private_path.name + ".pub")
    atomic_write(public_path, public + f" {comment}\n".encode(), mode=0o644)
    return NodeKey(private_path, public_path)

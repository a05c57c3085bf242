"""The local CA: certificates verify under the CA (and only it) in a real TLS handshake."""

from __future__ import annotations

import datetime as dt
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from edgeai.plumbing.pki import CertFiles, TLSError, issue, load_ca, make_ca


def handshake(server: CertFiles, ca: Path, hostname: str) -> None:
    """A TLS handshake through memory BIOs, as a client verifying ``hostname`` with ``ca``."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(server.cert, server.key)
    client_ctx = ssl.create_default_context(cafile=str(ca))
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT  # as Python 3.13 does by default
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    srv = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, end in (("client", client), ("server", srv)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


@pytest.fixture
def ca(tmp_path: Path) -> CertFiles:
    return make_ca(tmp_path / "ca")


def test_issued_certificate_verifies_for_its_names_only(ca: CertFiles, tmp_path: Path) -> None:
    broker = issue(ca, "broker", ["mqtt.example.org", "127.0.0.1"], tmp_path / "out")
    handshake(broker, ca.cert, "mqtt.example.org")
    handshake(broker, ca.cert, "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(broker, ca.cert, "other.example.org")


def test_another_ca_is_refused(ca: CertFiles, tmp_path: Path) -> None:
    broker = issue(ca, "broker", ["localhost"], tmp_path)
    other = make_ca(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        handshake(broker, other.cert, "localhost")


def test_keys_are_private_and_the_ca_is_never_overwritten(ca: CertFiles, tmp_path: Path) -> None:
    leaf = issue(ca, "node-1", ["node-1.local"], tmp_path)
    for key in (ca.key, leaf.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(leaf.cert.stat().st_mode) == 0o644
    with pytest.raises(TLSError, match="exists already"):
        make_ca(ca.cert.parent)
    assert load_ca(ca.cert.parent) == ca


def test_validity_is_bounded_by_the_ca(tmp_path: Path) -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    ca = make_ca(tmp_path / "ca", days=10, now=lambda: now)
    leaf = issue(ca, "b", ["h"], tmp_path, days=825, now=lambda: now)
    cert = x509.load_pem_x509_certificate(leaf.cert.read_bytes())
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    assert cert.not_valid_after_utc == ca_cert.not_valid_after_utc
    assert cert.not_valid_before_utc < now
    cert.verify_directly_issued_by(ca_cert)


@pytest.mark.parametrize(("name", "sans"), [("ca", ["h"]), ("../x", ["h"]), ("b", [])])
def test_bad_requests_are_refused(
    ca: CertFiles, tmp_path: Path, name: str, sans: list[str]
) -> None:
    with pytest.raises(TLSError):
        issue(ca, name, sans, tmp_path)


def test_unreadable_ca_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TLSError, match="cannot read the CA"):
        load_ca(tmp_path)

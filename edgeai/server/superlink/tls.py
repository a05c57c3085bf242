"""A private CA and a server certificate for the SuperLink (demos, tests, first start-up).

SuperNode authentication needs TLS on the SuperLink (``flwr/superlink/cli/flower_superlink.py``
refuses ``--enable-supernode-auth`` with ``--insecure``). An operator with a real PKI points
the config at its own files; this makes a working set for loopback and lab fleets, with the
fleet's one CA code (:mod:`edgeai.plumbing.pki`): what strict verifiers need (key usages,
key identifiers, SANs) is written there once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeai.plumbing.pki import issue, make_ca


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA certificate nodes trust, and the SuperLink's certificate and key."""

    ca_cert: Path
    cert: Path
    key: Path


def generate_tls(
    out_dir: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost"), days: int = 365
) -> TlsFiles:
    """Write ``ca.pem``, ``server.pem`` and ``server.key`` (P-256) for ``hosts`` into ``out_dir``.

    The server certificate names every host as a subject alternative name: clients
    verify the address they dial against it. A set made earlier in ``out_dir`` is
    replaced. The CA's key is not kept: nothing else is ever signed with it.

    Raises
    ------
    TLSError
        ``hosts`` is empty, or a file cannot be written.
    """
    for stale in ("ca.pem", "ca.key"):  # make_ca refuses to overwrite a CA
        (out_dir / stale).unlink(missing_ok=True)
    ca = make_ca(out_dir, common_name="edgeai federation CA", days=days)
    try:
        server = issue(ca, "server", hosts, out_dir, days=days)
    finally:
        ca.key.unlink()
    return TlsFiles(ca.cert, server.cert, server.key)

"""Node identity and enrollment: a device's key pair, approved by the operator.

Flower 1.42 admits a SuperNode to a SuperLink started with ``--enable-supernode-auth``
only when its public key was registered through the Control API (``RegisterNode``;
``flwr/cli/supernode/register.py`` is the CLI face of it). Keys are ECDSA on a NIST curve
in OpenSSH format: the SuperNode reads its private key with ``load_ssh_private_key``
(``flwr/supernode/cli/flower_supernode.py``), the CLI the public key with
``load_ssh_public_key``. This is what ``ssh-keygen -t ecdsa -b 384`` writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeai.errors import ConfigError
from edgeai.server.superlink.control import ControlConnection, control_client


@dataclass(frozen=True)
class EnrolledNode:
    """One SuperNode the SuperLink knows."""

    node_id: int
    name: str
    status: str  # registered | online | offline | unregistered
    public_key: str  # OpenSSH form, as enrolled


def read_public_key(path: Path) -> bytes:
    """The key in the form the SuperLink stores (PEM SubjectPublicKeyInfo).

    Raises
    ------
    ConfigError
        Missing file, or not an ECDSA public key on a NIST curve in OpenSSH format.
    """
    from flwr.supercore.primitives.asymmetric import (  # noqa: PLC0415
        public_key_to_bytes,
        uses_nist_ec_curve,
    )

    if not path.is_file():
        raise ConfigError(f"{path}: no such public key file")
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            f"{path}: not an OpenSSH public key ({exc}); make one with "
            "generate_node_key() or `ssh-keygen -t ecdsa -b 384`"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not uses_nist_ec_curve(key):
        raise ConfigError(
            f"{path}: Flower needs an ECDSA key on a NIST curve (P-256/384/521); "
            "make one with `ssh-keygen -t ecdsa -b 384`"
        )
    return bytes(public_key_to_bytes(key))


def _openssh(pem: bytes) -> str:
    key = serialization.load_pem_public_key(pem)
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def enroll(conn: ControlConnection, public_key_path: Path, name: str | None = None) -> int:
    """Approve a node's public key on the SuperLink; return the node id it will have.

    The node keeps this id across SuperNode and SuperLink restarts (the SuperLink
    needs ``--database``).

    Raises
    ------
    ControlAPIError
        The SuperLink refused (e.g. the key is already enrolled) or is unreachable.
    """
    from flwr.proto.control_pb2 import RegisterNodeRequest  # noqa: PLC0415

    key = read_public_key(public_key_path)
    with control_client(conn, f"enrolling {public_key_path}") as client:
        res = client.RegisterNode(RegisterNodeRequest(public_key=key, name=name))
    return int(res.node_id)


def unenroll(conn: ControlConnection, node_id: int) -> None:
    """Withdraw a node's approval: its SuperNode can no longer connect."""
    from flwr.proto.control_pb2 import UnregisterNodeRequest  # noqa: PLC0415

    with control_client(conn, f"unenrolling node {node_id}") as client:
        client.UnregisterNode(UnregisterNodeRequest(node_id=node_id))


def enrolled_nodes(conn: ControlConnection) -> list[EnrolledNode]:
    """Every node the SuperLink knows, with its status."""
    from flwr.proto.control_pb2 import ListNodesRequest  # noqa: PLC0415

    with control_client(conn, "listing nodes") as client:
        res = client.ListNodes(ListNodesRequest())
    return [
        EnrolledNode(
            int(n.node_id),
            n.name,
            n.status,
            _openssh(bytes(n.public_key)) if n.public_key else "",
        )
        for n in res.nodes_info
    ]

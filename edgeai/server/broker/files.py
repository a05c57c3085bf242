"""The broker's files: mosquitto.conf, the ACL and the password file (pure text + file edits).

Private to :mod:`edgeai.server.broker.managed`, which re-exports the public names.  Mosquitto's
formats are in mosquitto.conf(5) ("acl_file", "password_file") and mosquitto_passwd(1).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from edgeai.errors import ConfigError, EdgeAIError
from edgeai.plumbing.files import atomic_write
from edgeai.plumbing.processes import ExecutableNotFoundError, find_executable
from edgeai.telemetry.topics import PREFIX, check_name

if TYPE_CHECKING:
    from edgeai.server.broker.managed import BrokerConfig


class BrokerError(EdgeAIError, RuntimeError):
    """The broker cannot be configured, started, reloaded, or a node cannot be enrolled."""


@dataclass(frozen=True)
class BrokerPaths:
    """The files of one Mosquitto: config, password file, ACL, persistence, log, TLS."""

    conf: Path
    password_file: Path
    acl_file: Path
    store: Path
    log: Path | None = None  # None: log to stderr (systemd's journal, a container's log)
    ca_file: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None


@dataclass(frozen=True)
class Credentials:
    """What a client needs to log in; :meth:`settings` fits TelemetryConfig/CollectorConfig."""

    username: str
    password: str = field(repr=False)
    broker_url: str
    fleet: str
    ca_file: Path | None = None

    def settings(self) -> dict[str, Any]:
        """``broker_url``, ``fleet``, ``username``, ``password`` (and ``ca_file``)."""
        out: dict[str, Any] = {
            "broker_url": self.broker_url,
            "fleet": self.fleet,
            "username": self.username,
            "password": self.password,
        }
        if self.ca_file is not None:
            out["ca_file"] = self.ca_file
        return out

    def toml(self, section: str = "telemetry") -> str:
        """The settings as a TOML section to paste into ``agent.toml``."""
        return tomli_w.dumps({section: {k: str(v) for k, v in self.settings().items()}})


def releases_user(server_user: str) -> str:
    """The server's second account, for its release announcer: ``<server_user>-releases``.

    The broker binds the client id to the user name (``use_username_as_clientid``), so one
    account holds one connection; the collector and the announcer each need their own.  The
    announcer logs in with the collector's password.
    """
    return f"{check_user(server_user)}-releases"


def render_acl(
    fleet: str, server_user: str = "edgeai-server", collectors: Sequence[str] = ()
) -> str:
    """The ACL file: nodes write only under their own ``nodes/<username>/`` (pure).

    ``pattern`` lines apply to every user with ``%u`` replaced by the username; ``topic``
    lines after ``user X`` apply to X only (mosquitto.conf(5), "acl_file").  No line uses
    ``%c`` (the client id): a client chooses its id, and the broker replaces it with the
    user name anyway.  ``collectors`` are the accounts of extra collector replicas (a
    shared subscription group, docs/FLEET.md): they read the fleet and write nothing.
    """
    base = f"{PREFIX}/{check_name(fleet, 'fleet')}"
    replicas = [
        line
        for user in collectors
        for line in (f"user {check_user(check_name(user, 'user'))}", f"topic read {base}/#", "")
    ]
    if replicas:
        replicas.insert(0, "# Collector replicas, one account each: read the fleet, write nothing.")
    return "\n".join(
        [
            f"# edgeai ACL for fleet {fleet!r} (mosquitto.conf(5) 'acl_file'; re-read on SIGHUP).",
            "# Nodes (username = node name) write only under their own nodes/<node>/ and read",
            "# release announcements and their own commands; anything else is denied (PUBACK 135).",
            f"pattern write {base}/nodes/%u/#",
            # Mosquitto warns that this pattern has no %u: it is meant for every node.
            f"pattern read {base}/releases/#",
            f"pattern read {base}/nodes/%u/cmd/#",
            "",
            "# The federation server: reads the whole fleet, announces releases, commands nodes.",
            f"user {check_user(server_user)}",
            f"topic read {base}/#",
            f"topic write {base}/releases/#",
            f"topic write {base}/nodes/+/cmd/#",
            "",
            "# The server's release announcer: one account per connection (the client id is the",
            "# user name), same password as the server's.",
            f"user {releases_user(server_user)}",
            f"topic write {base}/releases/#",
            "",
            *replicas,
        ]
    )


def render_mosquitto_conf(config: BrokerConfig, paths: BrokerPaths) -> str:
    """``mosquitto.conf`` for one listener (TLS when ``config.tls``), passwords and ACL (pure)."""
    lines = [
        "# Written by edgeai (edgeai/server/broker/managed.py); options: mosquitto.conf(5).",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {paths.password_file}",
        f"acl_file {paths.acl_file}",
        "",
        f"listener {config.port} {config.host}",
        "protocol mqtt",
        # The client id is the user name, whatever the client sends: without this, any node
        # could claim another's (predictable) id, kick it off and take or wipe its persistent
        # session and queued commands.  One connection per account, hence.  A listener
        # option (mosquitto.conf(5), "Listeners"): above the listener line it does nothing.
        "use_username_as_clientid true",
    ]
    if config.tls:
        if not (paths.ca_file and paths.certfile and paths.keyfile):
            raise BrokerError("tls = true needs ca_file, certfile and keyfile paths")
        lines += [
            f"cafile {paths.ca_file}",
            f"certfile {paths.certfile}",
            f"keyfile {paths.keyfile}",
            # Nodes log in with username/password over TLS; client certificates are optional.
            "require_certificate false",
            "tls_version tlsv1.2",  # the minimum accepted
        ]
    lines += [
        "",
        "persistence true",
        # Mosquitto 1.x appends the file name as is, so end with '/' (2.x adds one itself).
        f"persistence_location {paths.store}/",
        f"autosave_interval {config.autosave_interval_s}",
        f"persistent_client_expiration {config.persistent_client_expiration}",
        "",
        "# MQTT 5 limits",
        f"max_packet_size {config.max_packet_size}",
        f"max_inflight_messages {config.max_inflight_messages}",
        f"max_queued_messages {config.max_queued_messages}",
        f"max_keepalive {config.max_keepalive_s}",
        "",
        f"log_dest {'file ' + str(paths.log) if paths.log else 'stderr'}",
        *(f"log_type {t}" for t in ("error", "warning", "notice", "information")),
        "connection_messages true",
    ]
    user = config.user or ("root" if os.geteuid() == 0 else None)
    if user is not None:
        # As root, Mosquitto would switch to the 'mosquitto' account, which cannot read files
        # written 0600 by the server; "user root" keeps it as the account that owns them.
        lines.append(f"user {user}")
    return "\n".join(lines) + "\n"


def check_user(name: str) -> str:
    """Return ``name`` when it can be a broker account; raise BrokerError otherwise."""
    # ':' ends the user name in a password file line; '%' would confuse ACL patterns.
    if re.search(r"[:%\s]", name):
        raise ConfigError(f"{name!r}: broker user names cannot contain ':', '%' or spaces")
    return name


def users(path: Path) -> list[str]:
    """The user names in a password file (none if it does not exist)."""
    return [line.split(":", 1)[0] for line in _lines(path)]


def hash_entry(tool: str, name: str, password: str) -> str:
    """A password file line ``name:$7$...`` made by ``mosquitto_passwd -U``.

    ``-U`` hashes a plain ``name:password`` file in place, so the password is written only
    to a private (0600) temporary file, never onto a command line others can see in ps.
    """
    try:
        found = find_executable(tool, fix="install mosquitto (it ships mosquitto_passwd)")
    except ExecutableNotFoundError as exc:
        raise BrokerError(str(exc)) from exc
    fd, tmp = tempfile.mkstemp(prefix="edgeai-passwd-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(f"{name}:{password}\n")
        done = subprocess.run([found, "-U", tmp], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BrokerError(f"{found} -U failed ({done.returncode}): {done.stderr.strip()}")
        return Path(tmp).read_text(encoding="utf-8").strip()
    finally:
        Path(tmp).unlink(missing_ok=True)


def put_entry(path: Path, entry: str) -> None:
    """Add or replace the user of ``entry`` (a ``name:hash`` line) in the password file."""
    name = entry.split(":", 1)[0]
    kept = [line for line in _lines(path) if line.split(":", 1)[0] != name]
    write_private(path, "".join(f"{line}\n" for line in [*kept, entry]))


def drop_entry(path: Path, name: str) -> bool:
    """Remove ``name`` from the password file; False if it was not there."""
    lines = _lines(path)
    kept = [line for line in lines if line.split(":", 1)[0] != name]
    if len(kept) == len(lines):
        return False
    write_private(path, "".join(f"{line}\n" for line in kept))
    return True


def _lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically; a new file is 0600, a replaced one keeps mode and owner.

    Keeping the owner matters when Mosquitto drops to its own account ("user mosquitto")
    and reads a password file that root edits.
    """
    atomic_write(path, text, mode=None if path.exists() else 0o600)

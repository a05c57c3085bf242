"""The fleet's MQTT broker: a configured Mosquitto, or one the server starts (``manage = true``).

Public API::

    BrokerConfig(...)                    the [broker] settings of federation.toml
    render_acl(fleet, server_user)       the ACL: each node writes only under nodes/<node>/
    releases_user(server_user)           the server announcer's account (<server_user>-releases)
    render_mosquitto_conf(config, paths) TLS listener, passwords, ACL, persistence, limits
    write_mosquitto_conf(config)         write conf + ACL (+ a CA and broker certificate)
    add_node(config, name) / remove_node enroll a node in the password file -> Credentials
    ManagedBroker(config)                start / stop / restart / reload a Mosquitto process

Mosquitto re-reads ``password_file`` and ``acl_file`` on SIGHUP (mosquitto.conf(5), "Both
... are reloaded"; ``src/mosquitto.c`` logs "Reloading config." and reloads in the same
main-loop pass), so a node enrolled while the broker runs can connect right after
:meth:`ManagedBroker.reload`, and a removed node is disconnected.  A publish the ACL denies
is answered, to an MQTT 5 client, with PUBACK reason code 135 (not authorized).

The broker binds the client id to the user name (``use_username_as_clientid``): a node
cannot claim another node's id, kick it off and take or wipe its persistent session.  An
account therefore holds one connection at a time; the server has two (collector and
release announcer, :func:`releases_user`), both with the password of ``server_user``.
"""

from __future__ import annotations

import re
import secrets
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from edgeai.configfile import Frozen
from edgeai.plumbing.pki import issue, load_ca, make_ca
from edgeai.plumbing.processes import (
    ExecutableNotFoundError,
    find_executable,
    port_accepts,
    terminate,
    wait_until,
)
from edgeai.server.broker.files import (
    BrokerError,
    BrokerPaths,
    Credentials,
    check_user,
    drop_entry,
    hash_entry,
    put_entry,
    releases_user,
    render_acl,
    render_mosquitto_conf,
    users,
    write_private,
)
from edgeai.telemetry.settings import check_broker_url
from edgeai.telemetry.topics import check_name

__all__ = ["BrokerConfig", "ManagedBroker", "add_node", "remove_node", "write_mosquitto_conf"]

_RUNNING = re.compile(rb"mosquitto version \S+ running")  # NOTICE, after binding
_RELOADED = b"Reloading config."  # the INFO line src/mosquitto.c logs on SIGHUP
_SERVER_SECRET_FILE = "server.secret"  # noqa: S105 - a file name, not a secret


class BrokerConfig(Frozen):
    """The ``[broker]`` settings: ``url`` of an existing broker, or ``manage = true``."""

    url: str | None = None  # mqtt(s)://host:port of a broker someone else runs
    manage: bool = False  # start a local Mosquitto (demo, single host)
    fleet: str = "default"
    server_user: str = "edgeai-server"  # the collector / release manager's broker account
    collector_users: tuple[str, ...] = ()  # collector replicas' accounts: read-only (ACL)
    binary: str = "mosquitto"
    passwd_binary: str = "mosquitto_passwd"  # noqa: S105 - a program name
    host: str = "127.0.0.1"  # listen address (manage = true)
    advertise_host: str | None = None  # what clients dial and the certificate names
    port: int = Field(8883, ge=1, le=65535)
    tls: bool = True
    data_dir: Path = Path("broker")  # conf, passwd, acl, persistence, log, generated TLS
    ca_file: Path | None = None  # clients verify the broker with it
    certfile: Path | None = None  # the broker's certificate; None: generated from a local CA
    keyfile: Path | None = None
    password_file: Path | None = None  # default data_dir/passwd
    acl_file: Path | None = None  # default data_dir/acl
    user: str | None = None  # mosquitto.conf "user" (the account it drops to when root)
    max_packet_size: int = Field(1_048_576, ge=1024)
    max_inflight_messages: int = Field(20, ge=0, le=65535)
    max_queued_messages: int = Field(100_000, ge=0)  # per offline persistent session
    max_keepalive_s: int = Field(300, ge=10, le=65535)
    persistent_client_expiration: str = Field("14d", pattern=r"^[0-9]+[hdwmy]$")
    autosave_interval_s: int = Field(60, ge=1)
    start_timeout_s: float = Field(10.0, gt=0)
    stop_timeout_s: float = Field(10.0, gt=0)

    @field_validator("fleet", "server_user")
    @classmethod
    def _topic_level(cls, value: str) -> str:
        return check_user(check_name(value, "name"))

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return value if value is None else check_broker_url(value)

    @model_validator(mode="after")
    def _consistent(self) -> BrokerConfig:
        if self.manage == (self.url is not None):
            raise ValueError(
                "set either url = 'mqtts://HOST:PORT' (a broker you run) or manage = true "
                "(the server starts Mosquitto), exactly one of them"
            )
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile go together: set both or neither")
        if self.certfile is not None and self.ca_file is None:
            raise ValueError("certfile is set: set ca_file too (the CA clients verify it with)")
        if self.manage and not self.tls and self.ca_file is not None:
            raise ValueError("tls = false but ca_file is set: turn tls on or drop ca_file")
        return self

    @property
    def releases_user(self) -> str:
        """The release announcer's account (``<server_user>-releases``)."""
        return releases_user(self.server_user)

    @property
    def broker_url(self) -> str:
        """The URL clients use: ``url``, or ``mqtt(s)://advertise_host:port`` when managed."""
        if self.url is not None:
            return self.url
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.client_host}:{self.port}"

    @property
    def client_host(self) -> str:
        """The host clients dial (a wildcard listen address becomes loopback)."""
        if self.url is not None:
            return urlsplit(self.url).hostname or ""
        if self.advertise_host:
            return self.advertise_host
        return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)  # noqa: S104

    def paths(self) -> BrokerPaths:
        """Where the broker's files are (under ``data_dir`` unless set explicitly)."""
        root = self.data_dir
        tls = root / "tls"
        generated = self.tls and self.certfile is None
        return BrokerPaths(
            conf=root / "mosquitto.conf",
            password_file=self.password_file or root / "passwd",
            acl_file=self.acl_file or root / "acl",
            store=root / "store",
            log=root / "mosquitto.log",
            ca_file=(tls / "ca.pem" if generated else self.ca_file) if self.tls else None,
            certfile=(tls / "broker.pem" if generated else self.certfile) if self.tls else None,
            keyfile=(tls / "broker.key" if generated else self.keyfile) if self.tls else None,
        )


def write_mosquitto_conf(config: BrokerConfig) -> BrokerPaths:
    """Write conf and ACL, an empty password file if none, and TLS files if generated.

    With ``tls = true`` and no ``certfile``, a CA is made in ``data_dir/tls`` (once) and a
    broker certificate is issued for ``client_host``, ``localhost`` and ``127.0.0.1``.
    """
    paths = config.paths()
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        paths.store.mkdir(parents=True, exist_ok=True)
        if config.tls and config.certfile is None and paths.ca_file and paths.certfile:
            tls_dir = paths.ca_file.parent
            ca = load_ca(tls_dir) if paths.ca_file.exists() else make_ca(tls_dir)
            if not paths.certfile.exists():
                sans = dict.fromkeys([config.client_host, "localhost", "127.0.0.1"])
                issue(ca, "broker", list(sans), tls_dir)
        if not paths.password_file.exists():
            write_private(paths.password_file, "")
        acl = render_acl(config.fleet, config.server_user, config.collector_users)
        write_private(paths.acl_file, acl)
        write_private(paths.conf, render_mosquitto_conf(config, paths))
    except OSError as exc:
        raise BrokerError(f"cannot write the broker's files in {config.data_dir}: {exc}") from exc
    return paths


def add_node(config: BrokerConfig, name: str, password: str | None = None) -> Credentials:
    """Add (or re-key) ``name`` in the password file; returns its login for ``[telemetry]``.

    The hash is made by ``mosquitto_passwd -U`` on a private temporary file, so the password
    never appears on a command line.  A running broker needs a reload (SIGHUP) to see it.
    """
    if name in (config.server_user, config.releases_user):
        raise BrokerError(f"{name!r} is the server's account; choose another node name")
    return _set_password(config, check_user(check_name(name, "node")), password)


def remove_node(config: BrokerConfig, name: str) -> bool:
    """Remove ``name`` from the password file; False if it was not there."""
    path = config.paths().password_file
    try:
        return drop_entry(path, name)
    except OSError as exc:
        raise BrokerError(f"cannot rewrite the password file {path}: {exc}") from exc


def _set_password(config: BrokerConfig, name: str, password: str | None) -> Credentials:
    secret = password or secrets.token_urlsafe(24)
    path = config.paths().password_file
    try:
        put_entry(path, hash_entry(config.passwd_binary, name, secret))
    except OSError as exc:
        raise BrokerError(f"cannot write {name!r} into the password file {path}: {exc}") from exc
    ca_file = config.paths().ca_file if config.url is None else config.ca_file
    return Credentials(name, secret, config.broker_url, config.fleet, ca_file)


class ManagedBroker:
    """A Mosquitto process the server runs (``manage = true``).

    Parameters
    ----------
    config
        The broker settings; ``manage`` must be true.
    poll_s
        How often readiness is polled while waiting under a deadline.
    """

    def __init__(self, config: BrokerConfig, *, poll_s: float = 0.02) -> None:
        if not config.manage:
            raise BrokerError(
                "ManagedBroker needs [broker] manage = true (url is a broker you run)"
            )
        self.config = config
        self.paths = config.paths()
        self._poll_s = poll_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL clients connect to."""
        return self.config.broker_url

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def add_node(self, name: str, password: str | None = None) -> Credentials:
        """Enroll ``name`` (see :func:`add_node`) and reload a running broker."""
        creds = add_node(self.config, name, password)
        if self.running:
            self.reload()
        return creds

    def remove_node(self, name: str) -> bool:
        """Remove ``name``; a running broker reloads and disconnects it."""
        removed = remove_node(self.config, name)
        if removed and self.running:
            self.reload()
        return removed

    def server_credentials(self) -> Credentials:
        """The server's own login, created once and kept (0600) in ``data_dir``.

        The release announcer's account (:attr:`BrokerConfig.releases_user`) is enrolled
        with the same password: the broker allows one connection per account.
        """
        secret_file = self.config.data_dir / _SERVER_SECRET_FILE
        password = secret_file.read_text(encoding="utf-8").strip() if secret_file.exists() else None
        names = (self.config.server_user, self.config.releases_user)
        enrolled = users(self.paths.password_file)
        if password and all(name in enrolled for name in names):
            ca_file = self.paths.ca_file
            return Credentials(
                self.config.server_user, password, self.url, self.config.fleet, ca_file
            )
        creds = _set_password(self.config, self.config.server_user, password)
        _set_password(self.config, self.config.releases_user, creds.password)
        write_private(secret_file, creds.password + "\n")
        if self.running:
            self.reload()
        return creds

    def start(self) -> ManagedBroker:
        """Write the files, start Mosquitto and wait until it accepts connections."""
        if self.running:
            return self
        write_mosquitto_conf(self.config)
        try:
            binary = find_executable(
                self.config.binary, fix="install mosquitto or set [broker] binary"
            )
        except ExecutableNotFoundError as exc:
            raise BrokerError(str(exc)) from exc
        host, port = self.config.client_host, self.config.port
        if port_accepts(host, port):
            raise BrokerError(f"{host}:{port} is taken by another process; choose another port")
        stderr_path = self.config.data_dir / "mosquitto.stderr"
        log_start = len(self._log_bytes())
        with stderr_path.open("wb") as err:
            self._proc = subprocess.Popen(
                [binary, "-c", str(self.paths.conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

        # "running" is logged after every listener is bound; the port check alone could be
        # fooled by another process on the port.
        def ready() -> bool:
            return bool(_RUNNING.search(self._log_bytes()[log_start:])) and port_accepts(host, port)

        def alive() -> None:
            code = self._proc.poll() if self._proc is not None else None
            if code is not None:
                self._proc = None
                detail = stderr_path.read_text(errors="replace") + self._log_tail()
                raise BrokerError(f"mosquitto exited with {code} at start:\n{detail.strip()}")

        try:
            wait_until(
                ready, self.config.start_timeout_s, "mosquitto", poll_s=self._poll_s, check=alive
            )
        except TimeoutError as exc:
            self.stop()
            raise BrokerError(
                f"mosquitto not listening on {host}:{port} after "
                f"{self.config.start_timeout_s} s:\n{self._log_tail()}"
            ) from exc
        return self

    def reload(self) -> None:
        """SIGHUP: re-read password file and ACL; returns once Mosquitto has done so."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise BrokerError("the broker is not running; start() it first")
        before = self._log_bytes().count(_RELOADED)
        proc.send_signal(signal.SIGHUP)
        # The reload runs in the pass of the main loop that logs this line, before any
        # further packet is read, so a client connecting after it sees the new files.
        self._wait(lambda: self._log_bytes().count(_RELOADED) > before, "reload")

    def stop(self) -> None:
        """SIGTERM (Mosquitto saves its persistence store), then SIGKILL after the timeout."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        terminate(proc, self.config.stop_timeout_s, name="mosquitto")

    def restart(self) -> ManagedBroker:
        """Stop and start again (same port, same persistence store)."""
        self.stop()
        return self.start()

    def __enter__(self) -> ManagedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        def alive() -> None:
            if not self.running:
                raise BrokerError(f"mosquitto exited during {what}:\n{self._log_tail()}")

        try:
            wait_until(
                done,
                self.config.start_timeout_s,
                f"mosquitto {what}",
                poll_s=self._poll_s,
                check=alive,
            )
        except TimeoutError as exc:
            raise BrokerError(
                f"mosquitto {what} not done after {self.config.start_timeout_s} s"
            ) from exc

    def _log_bytes(self) -> bytes:
        log = self.paths.log
        return log.read_bytes() if log is not None and log.exists() else b""

    def _log_tail(self, lines: int = 20) -> str:
        text = self._log_bytes().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

"""Run a real Mosquitto broker on 127.0.0.1 for tests (and benchmarks).

    with Mosquitto(tmp_path) as broker:          # free port, persistence in tmp_path
        broker.url                               # "mqtt://127.0.0.1:PORT"
        broker.stop(); broker.start()            # same port, same persistence store
        broker.kill()                            # SIGKILL: only what was autosaved survives

``users={"node-a": "secret"}`` writes a hashed password file (``mosquitto_passwd``), turns
anonymous access off and binds the client id to the user name (``use_username_as_clientid``,
as ``edgeai.server.broker.managed`` does: one connection per user);
``acl=["pattern write edgeai/v1/+/nodes/%u/#"]`` writes an ACL file (see mosquitto.conf(5),
"acl_file").  A publish the ACL denies is answered, for an MQTT 5
client, with PUBACK reason code 135 (not authorized).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on the port."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Mosquitto:
    """One Mosquitto process with its config, password/ACL files and persistence in ``root``.

    Parameters
    ----------
    root
        A directory for the config, the persistence store and the log.
    port
        The port (a free one if None); kept across :meth:`restart`.
    users
        Username -> password; when given, anonymous clients are refused.
    acl
        ACL file lines (``topic ...``, ``user ...``, ``pattern ...``).
    extra
        More ``mosquitto.conf`` lines.
    """

    def __init__(
        self,
        root: Path,
        *,
        port: int | None = None,
        users: Mapping[str, str] | None = None,
        acl: Iterable[str] | None = None,
        extra: Iterable[str] = (),
        start_timeout_s: float = 10.0,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_path = self.root / "mosquitto.conf"
        self.log_path = self.root / "mosquitto.log"
        store = self.root / "store"
        store.mkdir(exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            "persistence true",
            f"persistence_location {store}/",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            # Tests queue thousands of QoS 1 messages for offline persistent sessions.
            "max_queued_messages 0",
            "max_inflight_messages 0",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to 'mosquitto', who can't write root's tmp
        if users:
            pw = self.root / "passwd"
            pw.write_text("".join(f"{u}:{p}\n" for u, p in users.items()), encoding="utf-8")
            subprocess.run(["mosquitto_passwd", "-U", str(pw)], check=True, capture_output=True)
            # As the generated config: the client id is the user name (no session takeover).
            lines += [
                "allow_anonymous false",
                f"password_file {pw}",
                "use_username_as_clientid true",
            ]
        else:
            lines.append("allow_anonymous true")
        if acl is not None:
            acl_path = self.root / "acl"
            acl_path.write_text("".join(f"{line}\n" for line in acl), encoding="utf-8")
            lines.append(f"acl_file {acl_path}")
        lines += list(extra)
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Mosquitto:
        """Start the broker and wait until it accepts connections."""
        if self.running:
            return self
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + self.start_timeout_s
        while not port_open(self.port, self.host):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(
                    f"mosquitto exited with {self.proc.returncode}: {err}{self.log()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(
                    f"mosquitto not listening on {self.port} after "
                    f"{self.start_timeout_s} s\n{self.log()}"
                )
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (the broker saves its persistence store) and wait for the exit."""
        self._end(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """SIGKILL: no goodbye, no final save."""
        self._end(signal.SIGKILL, 10.0)

    def restart(self) -> Mosquitto:
        """Stop and start again on the same port with the same store."""
        self.stop()
        return self.start()

    def _end(self, sig: signal.Signals, timeout_s: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stderr:
            proc.stderr.close()
        # The port must be free before a restart binds it again.
        deadline = time.monotonic() + timeout_s
        while port_open(self.port, self.host) and time.monotonic() < deadline:
            time.sleep(0.02)

    def log(self) -> str:
        """The broker's log so far (for failure messages)."""
        return (
            self.log_path.read_text(encoding="utf-8", errors="replace")
            if self.log_path.exists()
            else ""
        )

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()

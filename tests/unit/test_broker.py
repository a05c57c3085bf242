"""The broker's config, its rendered files, the password file, and the server/ kit."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeai.configfile import parse
from edgeai.errors import ConfigError
from edgeai.server.broker import (
    BrokerConfig,
    BrokerError,
    BrokerPaths,
    Credentials,
    ManagedBroker,
    add_node,
    remove_node,
    render_acl,
    render_mosquitto_conf,
    write_mosquitto_conf,
)
from edgeai.server.collector import CollectorConfig
from edgeai.server.releases import ReleaseConfig
from edgeai.telemetry import TelemetryConfig

ANY = "0.0.0.0"  # noqa: S104 - a listen address in a config, nothing binds
SERVER = Path(__file__).resolve().parents[2] / "server"


def directives(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "exactly one"),
        ({"manage": True, "url": "mqtts://h:8883"}, "exactly one"),
        ({"url": "http://h"}, "mqtt://HOST"),
        ({"url": "mqtts://h:99999"}, "bad port"),
        ({"manage": True, "certfile": "b.pem"}, "set both"),
        ({"manage": True, "certfile": "b.pem", "keyfile": "b.key"}, "ca_file"),
        ({"manage": True, "fleet": "a/b"}, "'/'"),
        ({"manage": True, "server_user": "x:y"}, "':'"),
        ({"manage": True, "persistent_client_expiration": "2 days"}, "pattern"),
    ],
)
def test_bad_broker_configs_name_the_fix(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(BrokerConfig, fields, "federation.toml [broker]")


def test_managed_url_and_paths() -> None:
    config = BrokerConfig(manage=True, host=ANY, port=1884, data_dir=Path("/d"))
    assert config.broker_url == "mqtts://127.0.0.1:1884"
    assert BrokerConfig(manage=True, tls=False, advertise_host="e.org").broker_url == (
        "mqtt://e.org:8883"
    )
    assert BrokerConfig(url="mqtt://m:1883").broker_url == "mqtt://m:1883"
    paths = config.paths()
    assert paths.ca_file == Path("/d/tls/ca.pem")
    assert paths.password_file == Path("/d/passwd")
    own = BrokerConfig(
        manage=True, ca_file=Path("c.pem"), certfile=Path("b.pem"), keyfile=Path("b.key")
    )
    assert (own.paths().certfile, own.paths().keyfile) == (Path("b.pem"), Path("b.key"))


def test_acl_lets_nodes_write_only_their_own_subtree() -> None:
    acl = directives(render_acl("f", "srv"))
    assert acl == [
        "pattern write edgeai/v1/f/nodes/%u/#",
        "pattern read edgeai/v1/f/releases/#",
        "pattern read edgeai/v1/f/nodes/%u/cmd/#",
        "user srv",
        "topic read edgeai/v1/f/#",
        "topic write edgeai/v1/f/releases/#",
        "topic write edgeai/v1/f/nodes/+/cmd/#",
        "user srv-releases",  # the announcer: one connection per account
        "topic write edgeai/v1/f/releases/#",
    ]
    # The client id is the user name, so a %c rule would add nothing a client controls.
    assert "%c" not in render_acl("f", "srv")
    assert BrokerConfig(manage=True, server_user="srv").releases_user == "srv-releases"


def test_conf_has_tls_listener_passwords_acl_and_persistence(tmp_path: Path) -> None:
    config = BrokerConfig(manage=True, port=8884, data_dir=tmp_path, user="mosquitto")
    lines = directives(render_mosquitto_conf(config, config.paths()))
    for line in (
        "allow_anonymous false",
        f"password_file {tmp_path / 'passwd'}",
        f"acl_file {tmp_path / 'acl'}",
        "listener 8884 127.0.0.1",
        f"cafile {tmp_path / 'tls/ca.pem'}",
        "require_certificate false",
        "persistence true",
        f"persistence_location {tmp_path / 'store'}/",
        "max_packet_size 1048576",
        "user mosquitto",
    ):
        assert line in lines
    # No node may claim another node's client id (and session). A listener option: placed
    # above the listener line, Mosquitto 2.0 accepts it and applies it to nothing.
    listener = lines.index("listener 8884 127.0.0.1")
    assert lines.index("use_username_as_clientid true") > listener
    plain = BrokerConfig(manage=True, tls=False, data_dir=tmp_path)
    assert not any(
        ln.startswith(("cafile", "certfile"))
        for ln in directives(render_mosquitto_conf(plain, plain.paths()))
    )


def test_write_files_makes_a_ca_once_and_a_private_password_file(tmp_path: Path) -> None:
    config = BrokerConfig(manage=True, data_dir=tmp_path / "b")
    paths = write_mosquitto_conf(config)
    ca = paths.ca_file.read_bytes()  # type: ignore[union-attr]
    assert paths.conf.is_file()
    assert stat.S_IMODE(paths.password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.keyfile.stat().st_mode) == 0o600  # type: ignore[union-attr]
    write_mosquitto_conf(config)
    assert paths.ca_file.read_bytes() == ca  # type: ignore[union-attr]


def test_add_and_remove_nodes_in_the_password_file(tmp_path: Path) -> None:
    config = BrokerConfig(manage=True, fleet="f", data_dir=tmp_path)
    a = add_node(config, "a")
    b = add_node(config, "b", password="pw-b")  # noqa: S106
    text = (tmp_path / "passwd").read_text()
    assert a.password not in text
    assert "pw-b" not in text
    assert [ln.split(":")[0] for ln in text.splitlines()] == ["a", "b"]
    assert text.splitlines()[1].startswith("b:$")  # hashed by mosquitto_passwd
    add_node(config, "a")  # re-key: replaced, not duplicated
    assert [ln.split(":")[0] for ln in (tmp_path / "passwd").read_text().splitlines()] == [
        "b",
        "a",
    ]
    assert remove_node(config, "b")
    assert not remove_node(config, "b")
    assert b.username == "b"
    assert "pw-b" not in repr(b)
    for server_account in ("edgeai-server", "edgeai-server-releases"):
        with pytest.raises(BrokerError, match="server's account"):
            add_node(config, server_account)
    with pytest.raises(ValueError, match="'\\+'"):
        add_node(config, "a+")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_server_credentials_enroll_the_collector_and_the_announcer(tmp_path: Path) -> None:
    broker = ManagedBroker(BrokerConfig(manage=True, tls=False, data_dir=tmp_path))
    creds = broker.server_credentials()
    assert creds.username == "edgeai-server"
    passwd = tmp_path / "passwd"
    assert [ln.split(":")[0] for ln in passwd.read_text().splitlines()] == [
        "edgeai-server",
        "edgeai-server-releases",
    ]
    assert broker.server_credentials().password == creds.password  # kept
    # A data_dir from before the announcer had its account gains it, same password.
    remove_node(broker.config, "edgeai-server-releases")
    assert broker.server_credentials().password == creds.password
    assert "edgeai-server-releases" in passwd.read_text()


def test_password_file_keeps_its_mode_when_rewritten(tmp_path: Path) -> None:
    config = BrokerConfig(manage=True, data_dir=tmp_path)
    add_node(config, "a")
    (tmp_path / "passwd").chmod(0o640)
    add_node(config, "b")
    assert stat.S_IMODE((tmp_path / "passwd").stat().st_mode) == 0o640


def test_credentials_fit_the_agent_and_collector_configs(tmp_path: Path) -> None:
    creds = Credentials("a", 'p"w\\', "mqtts://h:8883", "f", tmp_path / "ca.pem")
    section = tomllib.loads(creds.toml())["telemetry"]
    assert TelemetryConfig(**section) == TelemetryConfig(**creds.settings())
    assert section["password"] == 'p"w\\'  # noqa: S105
    assert CollectorConfig(**creds.settings()).username == "a"


def test_managed_broker_needs_manage_and_a_binary(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="manage = true"):
        ManagedBroker(BrokerConfig(url="mqtt://h"))
    broker = ManagedBroker(
        BrokerConfig(manage=True, tls=False, data_dir=tmp_path, binary="no-such-mosquitto")
    )
    with pytest.raises(BrokerError, match="not found"):
        broker.start()
    with pytest.raises(BrokerError, match="not running"):
        broker.reload()


# -- the operator's kit in server/ ----------------------------------------------------------


def federation() -> dict[str, Any]:
    return tomllib.loads((SERVER / "federation.toml").read_text())


def test_example_federation_toml_sections_validate() -> None:
    doc = federation()
    assert {"superlink", "broker", "artifacts", "collector", "releases", "discovery", "run"} <= set(
        doc
    )
    broker = parse(BrokerConfig, doc["broker"], "server/federation.toml [broker]")
    collector = parse(CollectorConfig, doc["collector"], "server/federation.toml [collector]")
    parse(ReleaseConfig, doc["releases"], "server/federation.toml [releases]")
    assert collector.broker_url == broker.broker_url
    assert collector.username == broker.server_user
    assert collector.ca_file == broker.paths().ca_file
    assert collector.fleet == broker.fleet


def test_mosquitto_template_and_acl_match_what_the_code_renders() -> None:
    config = BrokerConfig(manage=True, host=ANY, port=8883, user="mosquitto")
    paths = BrokerPaths(
        conf=Path("/etc/mosquitto/mosquitto.conf"),
        password_file=Path("/etc/mosquitto/edgeai/passwd"),
        acl_file=Path("/etc/mosquitto/edgeai/acl"),
        store=Path("/var/lib/mosquitto"),
        ca_file=Path("/etc/mosquitto/certs/ca.pem"),
        certfile=Path("/etc/mosquitto/certs/broker.pem"),
        keyfile=Path("/etc/mosquitto/certs/broker.key"),
    )
    template = (SERVER / "mosquitto.conf").read_text()
    assert directives(template) == directives(render_mosquitto_conf(config, paths))
    assert (SERVER / "acl").read_text() == render_acl(federation()["broker"]["fleet"])


def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    docs = {}
    for path in sorted((SERVER / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["apiVersion"], path
            assert doc["metadata"]["name"], path
            docs[doc["kind"], doc["metadata"]["name"]] = doc
    return docs


def test_k8s_manifests_are_consistent_with_federation_toml() -> None:
    docs = k8s()
    assert {kind for kind, _ in docs} >= {
        "ConfigMap",
        "Deployment",
        "Service",
        "StatefulSet",
        "PersistentVolumeClaim",
    }
    fed = federation()
    expected = {
        ("Service", "mosquitto"): {fed["broker"]["port"]},
        ("Service", "edgeai-server"): {
            fed["superlink"]["port"],
            fed["artifacts"]["port"],
            fed["metrics_port"],
        },
    }
    workloads = [d for (kind, _), d in docs.items() if kind in ("Deployment", "StatefulSet")]
    for key, ports in expected.items():
        service = docs[key]
        assert {p["port"] for p in service["spec"]["ports"]} == ports
        # The selector picks a workload whose container exposes every named target port.
        (workload,) = [
            w
            for w in workloads
            if service["spec"]["selector"].items()
            <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        named = {
            p["name"]: p["containerPort"]
            for c in workload["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        for port in service["spec"]["ports"]:
            assert named[port["targetPort"]] == port["port"]
    for w in workloads:
        assert w["spec"]["selector"]["matchLabels"].items() <= (
            w["spec"]["template"]["metadata"]["labels"].items()
        )


def test_k8s_broker_config_matches_the_kit() -> None:
    docs = k8s()
    data = docs["ConfigMap", "mosquitto-config"]["data"]
    keys = {ln.split()[0] for ln in directives(data["mosquitto.conf"])}
    assert keys == {ln.split()[0] for ln in directives((SERVER / "mosquitto.conf").read_text())}
    server_toml = tomllib.loads(
        docs["ConfigMap", "edgeai-server-config"]["data"]["federation.toml"]
    )
    broker = parse(BrokerConfig, server_toml["broker"], "k8s [broker]")
    # The kit's ACL plus the collector replicas' read-only accounts (k8s/collector.yaml).
    assert data["acl"].startswith((SERVER / "acl").read_text())
    assert data["acl"] == render_acl(broker.fleet, broker.server_user, broker.collector_users)
    collector = parse(CollectorConfig, server_toml["collector"], "k8s [collector]")
    assert broker.broker_url == collector.broker_url == "mqtts://mosquitto:8883"
    mosquitto_port = docs["Service", "mosquitto"]["spec"]["ports"][0]["port"]
    assert broker.client_host == "mosquitto"
    assert f":{mosquitto_port}" in broker.broker_url

"""The MQTT broker the server manages: Mosquitto's config, accounts, ACL and process.

:class:`ManagedBroker` renders ``mosquitto.conf``, the password file and the per-node ACL
(:mod:`edgeai.server.broker.files`), runs Mosquitto and reloads it when nodes are added.
"""

from edgeai.server.broker.files import (
    BrokerError,
    BrokerPaths,
    Credentials,
    releases_user,
    render_acl,
    render_mosquitto_conf,
)
from edgeai.server.broker.managed import (
    BrokerConfig,
    ManagedBroker,
    add_node,
    remove_node,
    write_mosquitto_conf,
)

__all__ = [
    "BrokerConfig",
    "BrokerError",
    "BrokerPaths",
    "Credentials",
    "ManagedBroker",
    "add_node",
    "releases_user",
    "remove_node",
    "render_acl",
    "render_mosquitto_conf",
    "write_mosquitto_conf",
]

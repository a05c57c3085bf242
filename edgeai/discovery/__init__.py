"""Zeroconf (mDNS / DNS-SD) discovery of the federation server and of LAN peers.

The server advertises ``_edgeai._tcp.local.`` with :class:`FederationAdvert`; an agent
finds it, advertises ``_edgeai-agent._tcp.local.`` and keeps a peer table with
:class:`Discovery`, which also re-queries the LAN periodically (python-zeroconf's own
browser stops asking after its start-up queries).  mDNS is never a liveness signal.

>>> from edgeai.discovery import DiscoveryConfig
>>> DiscoveryConfig().server_type
'_edgeai._tcp.local.'
"""

from edgeai.discovery.advert import FederationAdvert
from edgeai.discovery.browse import Directory, Discovery
from edgeai.discovery.config import DiscoveryConfig, DiscoveryError
from edgeai.discovery.memory import (
    AgentDiscovery,
    MemoryAdvert,
    MemoryDiscovery,
    MemoryLan,
    ServerAdvert,
)
from edgeai.discovery.records import (
    AgentInfo,
    Peer,
    Ports,
    ServerInfo,
    decode_txt,
    encode_txt,
    parse_agent_txt,
    parse_server_txt,
)

__all__ = [
    "AgentDiscovery",
    "AgentInfo",
    "Directory",
    "Discovery",
    "DiscoveryConfig",
    "DiscoveryError",
    "FederationAdvert",
    "MemoryAdvert",
    "MemoryDiscovery",
    "MemoryLan",
    "Peer",
    "Ports",
    "ServerAdvert",
    "ServerInfo",
    "decode_txt",
    "encode_txt",
    "parse_agent_txt",
    "parse_server_txt",
]

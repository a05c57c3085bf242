"""``edgeai demo``: the server, a broker and three agents on loopback, all real processes."""

from edgeai.server.demo.demo import PROFILES, AgentProc, Demo, write_fleet_json

__all__ = ["PROFILES", "AgentProc", "Demo", "write_fleet_json"]

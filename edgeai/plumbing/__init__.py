"""Shared plumbing below both daemons: keys, processes, atomic writes, SQLite.

``pki`` (the fleet CA and node keys), ``supervisor`` and ``processes`` (supervised
processes, waits), ``files`` (durable atomic writes, digests), ``sqlite`` (the one
opener).  Nothing here knows about agents or servers; both build on it.
"""

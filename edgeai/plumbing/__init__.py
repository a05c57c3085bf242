"""Shared plumbing below both daemons: keys and certificates, supervised processes.

Nothing here knows about agents or servers; both build on it.
"""

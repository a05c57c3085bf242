"""The edge agent: one long-lived supervisor per device (DESIGN.md §3).

It wires federation, updates, serving, telemetry and discovery together; the parts live
in their own subpackages and this package holds the wiring and little logic.
"""

"""The edge agent: one long-lived supervisor per device wiring federation, updates, serving,
telemetry and discovery together (DESIGN.md §3). The parts live in their own subpackages;
this package holds the wiring and little logic."""

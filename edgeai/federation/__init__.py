"""The federation server: SuperLink supervision, releases, telemetry collection, fleet status."""

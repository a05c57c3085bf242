"""Helpers shared by the test suites: bounded polling (``waiting``), a manual clock (``clock``)."""
